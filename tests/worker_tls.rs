//! The worker's TLS listener, as a real process: verified HTTPS with the certificate a CA
//! issued, plain HTTP refused on the same port, and a renewed certificate served without a
//! restart (new connections verify against the new issuer).

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{WAIT, certs::TestCa, ferry, free_port};
use rcgen::KeyPair;

/// A serving certificate for localhost and 127.0.0.1 from `ca`, written to `dir`.
fn issue(ca: &TestCa, dir: &Path) {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    // As a Secret volume swaps files: written aside, then renamed.
    std::fs::write(dir.join("tls.key.new"), key).unwrap();
    std::fs::write(dir.join("tls.crt.new"), cert).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
}

fn trusting(ca: &TestCa) -> reqwest::Client {
    ferry::install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, port: u16) -> Worker {
    std::fs::write(dir.join("admin-token"), "admin-secret\n").unwrap();
    std::fs::write(dir.join("ingest-token"), "ingest-secret\n").unwrap();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let child = Command::new(ferry())
        .args(["worker", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-token-file")
        .arg(dir.join("admin-token"))
        .arg("--ingest-token-file")
        .arg(dir.join("ingest-token"))
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("tls.key"))
        .env("RUST_LOG", "ferry=debug")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Worker(child)
}

async fn eventually_ok(client: &reqwest::Client, url: &str, what: &str, dir: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {}",
            std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_speaks_verified_tls_only_and_serves_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new("ferry test CA 1");
    issue(&first, dir.path());
    let port = free_port();
    let _worker = start(dir.path(), port);
    let url = format!("https://localhost:{port}/readyz");
    eventually_ok(&trusting(&first), &url, "the worker over TLS", dir.path()).await;

    // The admin routes over TLS, with the admin token.
    let listed = trusting(&first)
        .get(format!("https://127.0.0.1:{port}/v1/transports"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert!(listed.status().is_success(), "{}", listed.status());

    // Plain HTTP on the same port gets no answer: the handshake refuses it.
    let plain = common::client()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that does not trust the issuer refuses the worker.
    let stranger = TestCa::new("someone else");
    assert!(trusting(&stranger).get(&url).send().await.is_err());

    // Renewed by another issuer: new connections get the new certificate, no restart.
    let second = TestCa::new("ferry test CA 2");
    issue(&second, dir.path());
    eventually_ok(
        &trusting(&second),
        &url,
        "the renewed certificate",
        dir.path(),
    )
    .await;
    assert!(trusting(&first).get(&url).send().await.is_err());

    // A half-written renewal (a key that does not match) keeps the certificate served.
    std::fs::write(
        dir.path().join("tls.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let log = || std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    while !log().contains("still serving the certificate loaded before") {
        assert!(
            Instant::now() < deadline,
            "the bad key was not looked at: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually_ok(
        &trusting(&second),
        &url,
        "still the renewed certificate",
        dir.path(),
    )
    .await;
}

/// A worker given a certificate it cannot read does not start (and never serves plain HTTP
/// instead), naming the file.
#[test]
fn a_worker_without_a_readable_certificate_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
    let mut worker = start(dir.path(), free_port());
    let status = worker.0.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(log.contains("tls.crt"), "{log}");
}
