//! What a worker writes to its log when it is not on a terminal (a file, a pod's log): plain
//! text without colour codes, or with `--log-format json` one JSON object per line with the
//! documented field names. Real processes, stderr through a pipe.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The first line a worker logs on stderr, through a pipe.
fn first_log_line(format: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::write(dir.path().join("token"), "t").expect("token");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    if let Some(format) = format {
        command.args(["--log-format", format]);
    }
    let mut child = command
        .args(["worker", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-file")
        .arg(dir.path().join("token"))
        .arg("--ingest-token-file")
        .arg(dir.path().join("token"))
        .env_remove("RUST_LOG")
        .env_remove("FERRY_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry worker starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let started = Instant::now();
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !line.is_empty(),
        "the worker logged nothing within {:?}",
        started.elapsed()
    );
    line
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let line = first_log_line(None);
    assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
    assert!(line.contains("INFO"), "{line:?}");
    // Values in their Display form, never Rust's Debug (`listen=Some(127.0.0.1:…)`).
    assert!(line.contains("listen=127.0.0.1:"), "{line:?}");
    assert!(!line.contains("Some("), "{line:?}");
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    let line = first_log_line(Some("json"));
    let object: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    for field in ["timestamp", "level", "target", "message"] {
        assert!(object.get(field).is_some(), "{field} missing in {line}");
    }
    assert_eq!(object["level"], "INFO", "{line}");
    assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
}
