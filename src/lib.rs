//! ferry: a Kubernetes operator for Connections and Transports.

pub mod api;
pub mod connection;
pub mod destinations;
pub mod logging;
pub mod operator;
pub mod plugin;
pub mod sink;
pub mod source;
pub mod standalone;
pub mod store;
pub mod supervise;
pub mod transport;
pub mod trust;
pub mod wire;
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

/// A response's body, at most `limit` bytes: `Ok(None)` when it is larger, by its
/// Content-Length or as it arrives (nothing past the limit is held in memory).
pub async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// An error with its causes, `a: b: c` — reqwest's own message alone ("error sending
/// request") hides what went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A Kubernetes client error as one line a person can read: the API server's answer as
/// `<message> (<code> <reason>)`, not kube's `ApiError: … (Status { … })` with its debug form;
/// any other error with its causes.
pub fn kube_error_line(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let why = [
                (status.code != 0).then(|| status.code.to_string()),
                (!status.reason.is_empty()).then(|| status.reason.clone()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
            match (status.message.is_empty(), why.is_empty()) {
                (false, false) => format!("{} ({why})", status.message),
                (false, true) => status.message.clone(),
                (true, false) => format!("the API server answered {why}"),
                (true, true) => "the API server refused without saying why".into(),
            }
        }
        other => error_chain(other),
    }
}

/// The first `bytes` bytes of the SHA-256 of `text`, in hex: a hash that is the same in
/// every build of ferry (std's `DefaultHasher` may change between Rust releases), for names
/// and ids that must never change.
pub fn stable_hash_hex(text: &str, bytes: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..bytes.min(32)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// TLS for outgoing HTTPS uses rustls with ring, the provider kube uses too.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
