//! TLS with rustls (ring): the listener's certificate, reloaded when its files change, and the
//! client side for `https://` backends.
//!
//! - **Listener** (`[tls] cert`, `key`): PEM chain and key, checked to match at start-up (a
//!   clear error otherwise); ALPN `h2` and `http/1.1`. The files are checked every
//!   `reload_interval`; a new pair that loads and matches is used for every new handshake,
//!   open connections keep theirs; a broken pair is logged and the previous one kept.
//! - **Backends**: the system's trust store plus `[upstream] ca_file`, ALPN `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tenants::store::file::{stamp, Stamp};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's certificate and key files (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_interval: Duration,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Loads the pair and checks that the key belongs to the first certificate.
pub fn load_certified_key(files: &CertFiles) -> Result<CertifiedKey, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "{}: cannot read a PEM private key: {e}",
            files.key.display()
        )
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {}",
            files.key.display(),
            files.cert.display()
        ),
        e => format!("{}: {e}", files.key.display()),
    })
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Builds the listener's acceptor and starts watching the files. Must be called inside a Tokio
/// runtime.
pub fn acceptor(files: CertFiles) -> Result<TlsAcceptor, String> {
    let current = Arc::new(CurrentCert(ArcSwap::from_pointee(load_certified_key(
        &files,
    )?)));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload_when_changed(files, Arc::downgrade(&current)));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn reload_when_changed(files: CertFiles, current: std::sync::Weak<CurrentCert>) {
    let stamps = |f: &CertFiles| (stamp(&f.cert).ok(), stamp(&f.key).ok());
    let mut last: (Option<Stamp>, Option<Stamp>) = stamps(&files);
    loop {
        tokio::time::sleep(files.reload_interval).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let now = stamps(&files);
        if now == last {
            continue;
        }
        last = now;
        match load_certified_key(&files) {
            Ok(key) => {
                current.0.store(Arc::new(key));
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded; new connections use it");
            }
            // Often the first of two files written: the next change (the other file) retries.
            Err(problem) => {
                tracing::error!(%problem, "TLS certificate not reloaded; keeping the previous one")
            }
        }
    }
}

/// The connector for `https://` backends: the system's roots plus `ca_file`.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
