//! The certificate the webhook serves, swappable while serving: rustls asks [`ServingCert`]
//! for it at every handshake, so a renewed certificate is used from the next connection on,
//! with no restart and no dropped connection.
//!
//! Where it comes from is one of two keepers: [`watch_files`] for a mounted Secret (cert-manager
//! mode, or any `tls.crt`/`tls.key` pair), or the Secret keeper in `secret.rs`. Either only
//! ever replaces a good certificate with another good one: a pair that does not load is logged
//! and the previous one keeps serving.

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often [`watch_files`] looks at the files (a mounted Secret changes within a minute or
/// so of the Secret anyway).
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the PEM")]
    NoCertificate,
    #[error("bad certificate PEM: {0}")]
    Certificate(String),
    #[error("bad private key PEM: {0}")]
    Key(String),
    #[error("the key does not fit the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The certificate being served, and the PEM it came from (to notice changes cheaply).
#[derive(Debug, Default)]
pub struct ServingCert {
    current: RwLock<Option<Loaded>>,
    /// Turns true with the first certificate: until then every handshake fails, so the
    /// operator does not say it is ready.
    loaded: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// The crypto provider everything here uses: ring (kube's, and no cmake needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServingCert {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves this pair from the next handshake on. `Ok(false)`: it is what is served already.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, TlsError> {
        if let Some(loaded) = &*self.current.read()
            && loaded.cert_pem == cert_pem
            && loaded.key_pem == key_pem
        {
            return Ok(false);
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Mismatch)?;
        *self.current.write() = Some(Loaded {
            key: Arc::new(certified),
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.to_vec(),
        });
        self.loaded.send_replace(true);
        Ok(true)
    }

    /// The certificate chain (PEM) being served, if any.
    pub fn cert_pem(&self) -> Option<Vec<u8>> {
        self.current.read().as_ref().map(|l| l.cert_pem.clone())
    }

    /// Whether a certificate is loaded (before that, every handshake fails).
    pub fn is_loaded(&self) -> bool {
        self.current.read().is_some()
    }

    /// Whether a certificate is loaded, as a channel that turns true with the first one.
    pub fn loaded(&self) -> tokio::sync::watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// A rustls server configuration that serves whatever this holds; HTTP/2 and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().as_ref().map(|l| l.key.clone())
    }
}

/// Loads `dir/tls.crt` and `dir/tls.key` into `cert`; `Ok(true)` when they changed.
pub fn load_dir(dir: &Path, cert: &ServingCert) -> Result<bool, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|error| TlsError::Read { path, error })
    };
    cert.set_pem(&read("tls.crt")?, &read("tls.key")?)
}

/// Keeps `cert` loaded from `dir` (a mounted Secret: cert-manager writes a renewed pair and
/// the kubelet swaps the files): reads them now and every [`FILE_CHECK_INTERVAL`], until
/// shutdown.
pub async fn watch_files(
    dir: PathBuf,
    cert: Arc<ServingCert>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        match load_dir(&dir, &cert) {
            Ok(true) => {
                failing = false;
                tracing::info!(dir = %dir.display(), "webhook serving certificate loaded");
            }
            Ok(false) => failing = false,
            // Log once per failure streak, not every interval.
            Err(e) if !failing => {
                failing = true;
                tracing::error!(dir = %dir.display(), error = %e,
                    "cannot load the webhook certificate; serving the previous one, if any");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(FILE_CHECK_INTERVAL) => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}
