//! Browser origins: parsing, normalisation and the allow-list of one tenant.
//!
//! An origin is `scheme://host[:port]`. Normal form: scheme and host lower-cased, the default
//! port of `http`/`ws` (80) and `https`/`wss` (443) dropped. Allow-list entries are either exact
//! origins or `scheme://*.domain[:port]`, which matches any subdomain of `domain` (one or more
//! labels) but never `domain` itself nor another scheme or port. The opaque origin `null`
//! matches only when listed literally.

use std::fmt;

/// Why a string is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OriginError(String);

/// A parsed origin in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses and normalises `scheme://host[:port]`. Anything else (a path, a trailing slash,
    /// user info, a query) is not an origin.
    pub fn parse(raw: &str) -> Result<Origin, OriginError> {
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| OriginError(format!("{raw:?} is not scheme://host[:port]")))?;
        let scheme = scheme.to_ascii_lowercase();
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok {
            return Err(OriginError(format!("{raw:?} has an invalid scheme")));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| {
            OriginError(format!(
                "{raw:?} is not scheme://host[:port] (no path, no trailing slash)"
            ))
        })?;
        let host = host.to_ascii_lowercase();
        let port = match port {
            Some(p) if Some(p) == default_port(&scheme) => None,
            p => p,
        };
        Ok(Origin { scheme, host, port })
    }

    /// Host names this origin's host is a subdomain of, nearest first: `a.b.example.com` gives
    /// `b.example.com`, `example.com`, `com`. Empty for IP literals.
    fn parent_domains(&self) -> impl Iterator<Item = &str> {
        let is_ip = self.host.starts_with('[') || self.host.parse::<std::net::Ipv4Addr>().is_ok();
        let host = if is_ip { "" } else { self.host.as_str() };
        host.match_indices('.')
            .map(move |(i, _)| &host[i + 1..])
            .filter(|d| !d.is_empty())
    }

    /// The allow-list entries that would admit this origin: itself and every wildcard over one
    /// of its parent domains. Used to look an origin up in an index of allow-list entries (the
    /// file store's map, MongoDB's `$in`).
    pub fn lookup_candidates(&self) -> Vec<String> {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let mut out = vec![self.to_string()];
        out.extend(
            self.parent_domains()
                .map(|d| format!("{}://*.{d}{port}", self.scheme)),
        );
        out
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]`, rejecting anything that is not a bare authority without user info.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*'));
    if !host_ok || host.starts_with('.') || host.ends_with('.') || host.contains("..") {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&n| n != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// One entry of `allowedOrigins`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `null`: the opaque origin of sandboxed frames and `file:` pages.
    Null,
    Exact(String),
    /// `scheme://*.domain[:port]`; `suffix` is `.domain`.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

/// The allow-list of one tenant, ready for matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    patterns: Vec<Pattern>,
}

impl AllowedOrigins {
    /// Validates every entry; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedOrigins, OriginError> {
        let mut patterns = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref();
            let pattern = if entry == "null" {
                Pattern::Null
            } else if let Some((scheme, rest)) = entry.split_once("://*.") {
                // Validate the domain part by parsing it as the origin it stands for.
                let o = Origin::parse(&format!("{scheme}://{rest}"))?;
                if o.host.contains('*') || o.host.starts_with('[') {
                    return Err(OriginError(format!(
                        "{entry:?}: a wildcard covers a domain name, nothing else"
                    )));
                }
                Pattern::Subdomains {
                    suffix: format!(".{}", o.host),
                    scheme: o.scheme,
                    port: o.port,
                }
            } else {
                let o = Origin::parse(entry)?;
                if o.host.contains('*') {
                    return Err(OriginError(format!(
                        "{entry:?}: a wildcard must be written scheme://*.domain"
                    )));
                }
                Pattern::Exact(o.to_string())
            };
            patterns.push(pattern);
        }
        Ok(AllowedOrigins { patterns })
    }

    /// Whether the raw `Origin` header value is allowed.
    pub fn allows(&self, raw: &str) -> bool {
        // Fast path: browsers send origins already in normal form, so a byte-equal exact entry
        // decides without allocating.
        if self
            .patterns
            .iter()
            .any(|p| matches!(p, Pattern::Exact(e) if e == raw))
        {
            return true;
        }
        if raw == "null" {
            return self.patterns.contains(&Pattern::Null);
        }
        let Ok(origin) = Origin::parse(raw) else {
            return false;
        };
        let normal = origin.to_string();
        self.patterns.iter().any(|p| match p {
            Pattern::Null => false,
            Pattern::Exact(e) => *e == normal,
            Pattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
            }
        })
    }

    /// The entries in normal form, as index keys (exact origins, `scheme://*.domain[:port]`,
    /// `null`).
    pub fn index_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.patterns.iter().map(|p| match p {
            Pattern::Null => "null".to_string(),
            Pattern::Exact(e) => e.clone(),
            Pattern::Subdomains {
                scheme,
                suffix,
                port,
            } => match port {
                Some(port) => format!("{scheme}://*{suffix}:{port}"),
                None => format!("{scheme}://*{suffix}"),
            },
        })
    }
}

/// The index keys under which a preflight's raw `Origin` may be listed; `None` when the value is
/// not an origin at all.
pub fn index_candidates(raw: &str) -> Option<Vec<String>> {
    if raw == "null" {
        return Some(vec!["null".to_string()]);
    }
    Origin::parse(raw).ok().map(|o| o.lookup_candidates())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> AllowedOrigins {
        AllowedOrigins::parse(list).unwrap()
    }

    #[test]
    fn normalises_case_and_default_ports() {
        assert_eq!(
            Origin::parse("HTTPS://App.Example.COM:443")
                .unwrap()
                .to_string(),
            "https://app.example.com"
        );
        assert_eq!(
            Origin::parse("http://a.com:80").unwrap().to_string(),
            "http://a.com"
        );
        assert_eq!(
            Origin::parse("http://a.com:8080").unwrap().to_string(),
            "http://a.com:8080"
        );
        assert_eq!(
            Origin::parse("https://a.com:80").unwrap().to_string(),
            "https://a.com:80"
        );
        assert_eq!(
            Origin::parse("http://[::1]:3000").unwrap().to_string(),
            "http://[::1]:3000"
        );
    }

    #[test]
    fn rejects_what_is_not_an_origin() {
        for bad in [
            "https://a.com/",
            "https://a.com/path",
            "a.com",
            "https://",
            "https://user@a.com",
            "https://a.com:",
            "https://a.com:99999",
            "https://a.com:0",
            "https://a..com",
            "https://a.com?x",
            "1http://a.com",
            "https://a com",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn exact_entries_match_after_normalisation() {
        let a = allow(&["https://client-a.com", "http://localhost:3000"]);
        assert!(a.allows("https://client-a.com"));
        assert!(a.allows("HTTPS://CLIENT-A.COM"));
        assert!(a.allows("https://client-a.com:443"));
        assert!(a.allows("http://localhost:3000"));
        assert!(!a.allows("http://client-a.com"), "another scheme");
        assert!(!a.allows("https://client-a.com:8443"), "another port");
        assert!(
            !a.allows("https://client-a.com/"),
            "a trailing slash is not an origin"
        );
        assert!(!a.allows("https://evil-client-a.com"));
        assert!(!a.allows("http://localhost"));
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        let a = allow(&["https://*.client-a.com"]);
        assert!(a.allows("https://app.client-a.com"));
        assert!(a.allows("https://deep.app.client-a.com"));
        assert!(a.allows("https://APP.Client-A.com"));
        assert!(!a.allows("https://client-a.com"), "never the domain itself");
        assert!(!a.allows("http://app.client-a.com"), "never another scheme");
        assert!(
            !a.allows("https://app.client-a.com:8443"),
            "never another port"
        );
        assert!(
            !a.allows("https://appclient-a.com"),
            "a label boundary is required"
        );
        assert!(!a.allows("https://app.client-a.com.evil.com"));
    }

    #[test]
    fn null_matches_only_when_listed() {
        assert!(!allow(&["https://a.com"]).allows("null"));
        assert!(allow(&["null"]).allows("null"));
        assert!(!allow(&["null"]).allows("https://a.com"));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "https://a.com/",
            "*.a.com",
            "https://*",
            "https://a.*.com",
            "https://*.[::1]",
        ] {
            let err = AllowedOrigins::parse(&[bad]).unwrap_err();
            assert!(
                err.to_string()
                    .contains(bad.split("://").last().unwrap_or(bad)),
                "{err}"
            );
        }
    }

    #[test]
    fn lookup_candidates_hit_the_index_keys_of_a_matching_list() {
        let list = allow(&["https://*.client-a.com", "https://www.b.com:8443"]);
        let keys: Vec<String> = list.index_keys().collect();
        assert_eq!(keys, ["https://*.client-a.com", "https://www.b.com:8443"]);
        for (origin, hit) in [
            ("https://x.y.client-a.com", true),
            ("https://client-a.com", false),
            ("https://WWW.b.com:8443", true),
            ("https://www.b.com", false),
        ] {
            let cands = index_candidates(origin).unwrap();
            assert_eq!(
                cands.iter().any(|c| keys.contains(c)),
                hit,
                "{origin}: {cands:?}"
            );
            assert_eq!(list.allows(origin), hit, "{origin}");
        }
        assert_eq!(index_candidates("null").unwrap(), ["null"]);
        assert!(index_candidates("nonsense").is_none());
    }
}
