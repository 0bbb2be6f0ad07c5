//! A backend's base URL, parsed once (config load, tenant document) into what the pool needs
//! to connect and what the forwarded request's `Host` is.

use std::fmt;
use std::sync::Arc;

use http::header::HeaderValue;
use http::uri::{Authority, Scheme, Uri};
use rustls::pki_types::ServerName;

use crate::http::pool::Target;

/// A backend base URL: `http://host[:port]`, no path.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// The authority lower-cased: idle connections are pooled by it.
    pool_key: Arc<str>,
    /// `host:port` to connect to (the port defaulted).
    addr: String,
    /// The `Host` header sent to it.
    host: HeaderValue,
    /// For `https://`: the name its certificate must carry.
    tls: Option<ServerName<'static>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl Upstream {
    /// The `Host` the backend gets.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Where the pool connects for this backend.
    pub fn target(&self) -> Target<'_> {
        Target {
            authority: &self.pool_key,
            addr: &self.addr,
            tls: self.tls.as_ref(),
        }
    }

    /// Parses `http[s]://host[:port]` (a trailing `/` is fine; a path, query or user info is not).
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{url:?} has no scheme (want http://host:port)"))?;
        let https = if scheme == Scheme::HTTP {
            false
        } else if scheme == Scheme::HTTPS {
            true
        } else {
            return Err(format!("{url:?}: a backend is http:// or https://"));
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: user info is not supported"));
        }
        if !matches!(
            uri.path_and_query().map(|p| p.as_str()),
            None | Some("/") | Some("")
        ) {
            return Err(format!("{url:?}: a backend URL has no path or query"));
        }
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(if https { 443 } else { 80 })
        );
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{url:?}: invalid host"))?;
        let tls = match https {
            false => None,
            true => {
                let name = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                Some(
                    ServerName::try_from(name.to_string())
                        .map_err(|_| format!("{url:?}: {name:?} is not a TLS server name"))?,
                )
            }
        };
        Ok(Upstream {
            scheme,
            pool_key: Arc::from(authority.as_str().to_ascii_lowercase()),
            authority,
            addr,
            host,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            format!("{:?}", Upstream::parse("http://chat:3000/").unwrap()),
            "http://chat:3000"
        );
        for bad in [
            "chat:3000",
            "ftp://chat",
            "http://chat/api",
            "http://u:p@chat",
            "http://chat?x=1",
            "",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
