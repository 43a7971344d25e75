//! TLS on the worker's listener (`--tls-cert-file`, `--tls-key-file`): the certificate chain
//! and key are PEM files, as a Kubernetes TLS Secret mounts them (`tls.crt`, `tls.key`). They
//! are read again when they change (a renewed certificate is served to new connections without
//! a restart; a file that cannot be read keeps the certificate served before, with a warning).
//! With TLS on, the port speaks only TLS: a plain-HTTP request is refused in the handshake.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// How often the files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain from {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read the TLS private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot make the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("the TLS certificate in {cert} and the key in {key} do not go together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// Where the certificate chain and its key are.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The chain and key as they are now.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let display = |p: &Path| p.display().to_string();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TlsError::Certificate {
                path: display(&self.cert),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: display(&self.cert),
                reason: "no CERTIFICATE block in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Key {
            path: display(&self.key),
            reason: e.to_string(),
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
                cert: display(&self.cert),
                key: display(&self.key),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(certified))
    }

    /// The newer of the two files' modification times.
    fn changed_at(&self) -> Option<SystemTime> {
        let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        at(&self.cert).max(at(&self.key))
    }
}

/// The certificate served, replaced when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl ReloadingCert {
    pub fn new(files: CertFiles) -> Result<Arc<Self>, TlsError> {
        let changed = files.changed_at();
        let certified = files.load()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((certified, changed)),
        }))
    }

    /// Read the files again if they changed since they were last read; answers whether the
    /// certificate served was replaced.
    pub fn reload_if_changed(&self) -> bool {
        let changed = self.files.changed_at();
        let last = self.current.read().map(|c| c.1).unwrap_or(None);
        if changed == last {
            return false;
        }
        match self.files.load() {
            Ok(certified) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (certified, changed);
                }
                tracing::info!(cert = %self.files.cert.display(), "serving the renewed TLS certificate");
                true
            }
            Err(e) => {
                // Half-written (a Secret volume swaps both files at once, a hand copy may not):
                // keep serving the one before; the next look tries again.
                tracing::warn!(error = %e, "the TLS files changed but cannot be read; still serving the certificate loaded before");
                false
            }
        }
    }

    /// Look for changed files every `every`, for as long as the process runs.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let cert = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cert) = cert.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || cert.reload_if_changed()).await;
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

/// The server side of the worker's TLS: its certificate from `files`, HTTP/1.1 only.
pub fn acceptor(
    files: CertFiles,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<ReloadingCert>), TlsError> {
    let cert = ReloadingCert::new(files)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert))
}
