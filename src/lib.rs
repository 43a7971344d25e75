//! ferry: a Kubernetes operator for Connections and Transports.

pub mod api;
pub mod connection;
pub mod sink;
pub mod standalone;
pub mod transport;
pub mod worker;

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends a pod).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// TLS for outgoing HTTPS uses rustls with ring, the provider kube uses too.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
