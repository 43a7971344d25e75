//! The CA certificates this process trusts besides the platform's (`--ca-file`): a connection
//! worker's targets are transports' workers, which serve certificates from the operator's CA.
//! Set once when the process starts; its HTTP clients merge them into their roots.

use std::sync::OnceLock;

static EXTRA: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// Trust the certificates of the PEM bundle `pem` (read from `file`, for the message).
pub fn trust_for_process(pem: &[u8], file: &std::path::Path) -> Result<(), String> {
    let certificates = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| format!("--ca-file {}: not a PEM bundle: {e}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "--ca-file {}: no certificate in it",
            file.display()
        ));
    }
    let _ = EXTRA.set(certificates);
    Ok(())
}

/// What [`trust_for_process`] was given (none by default).
pub fn extra_roots() -> Vec<reqwest::Certificate> {
    EXTRA.get().cloned().unwrap_or_default()
}
