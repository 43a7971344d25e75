//! The CA certificates this process trusts besides the platform's (`--ca-file`): a connection
//! worker's targets are transports' workers, which serve certificates from the operator's CA.
//! The file is read when the process starts (a bundle that cannot be read stops it) and looked
//! at again at most every [`RELOAD_EVERY`] while it is used: a renewed bundle (the kubelet
//! swaps a Secret volume's files) is trusted without a restart; one that cannot be read leaves
//! the previous one trusted, with a warning.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// How often the file is looked at again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

struct Trusted {
    file: PathBuf,
    state: Mutex<State>,
}

struct State {
    checked: Instant,
    pem: Vec<u8>,
    certificates: Vec<reqwest::Certificate>,
    /// Moves on with every bundle taken: clients built for an older one are rebuilt.
    generation: u64,
}

static TRUSTED: OnceLock<Trusted> = OnceLock::new();

fn parse(pem: &[u8], file: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let certificates = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| format!("--ca-file {}: not a PEM bundle: {e}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "--ca-file {}: no certificate in it",
            file.display()
        ));
    }
    Ok(certificates)
}

/// Trust the certificates of the PEM bundle `pem`, read from `file` (looked at again later).
pub fn trust_for_process(pem: &[u8], file: &Path) -> Result<(), String> {
    let certificates = parse(pem, file)?;
    let _ = TRUSTED.set(Trusted {
        file: file.to_owned(),
        state: Mutex::new(State {
            checked: Instant::now(),
            pem: pem.to_vec(),
            certificates,
            generation: 1,
        }),
    });
    Ok(())
}

/// The bundle's generation now (0: none given), the file looked at again when it is due.
pub fn generation() -> u64 {
    let Some(trusted) = TRUSTED.get() else {
        return 0;
    };
    let mut state = trusted.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.checked.elapsed() >= RELOAD_EVERY {
        state.checked = Instant::now();
        match std::fs::read(&trusted.file) {
            Ok(pem) if pem == state.pem => {}
            Ok(pem) => match parse(&pem, &trusted.file) {
                Ok(certificates) => {
                    state.pem = pem;
                    state.certificates = certificates;
                    state.generation += 1;
                    tracing::info!(file = %trusted.file.display(), "trusting the renewed CA bundle");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "still trusting the CA bundle read before");
                }
            },
            Err(e) => {
                tracing::warn!(file = %trusted.file.display(), error = %e, "cannot read the CA bundle; still trusting the one read before");
            }
        }
    }
    state.generation
}

/// What is trusted besides the platform's roots now (none by default).
pub fn extra_roots() -> Vec<reqwest::Certificate> {
    TRUSTED.get().map_or_else(Vec::new, |trusted| {
        let state = trusted.state.lock().unwrap_or_else(|e| e.into_inner());
        state.certificates.clone()
    })
}
