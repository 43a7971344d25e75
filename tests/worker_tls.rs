//! The worker's TLS listener, as a real process: verified HTTPS with the certificate a CA
//! issued, plain HTTP refused on the same port, and a renewed certificate served without a
//! restart (new connections verify against the new issuer); the operator's CA through its
//! renewal overlap; a connection worker verifying its target with the bundle (`--ca-file`).

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

/// The operator's CA (src/operator/objects/certificates.rs) as a worker and its clients see it: the
/// worker serves a certificate the CA rebuilt from its Secret's state issued for the worker's
/// names; through a renewal a client holding the bundle of before keeps verifying the worker
/// until the new CA signs, and a client that re-read the bundle once the renewal began
/// verifies it before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_ca_renews_with_an_overlap() {
    use ferry::operator::objects::certificates::{
        CaState, CertificatePolicy, Issued, mint_ca, unix_now, worker_names,
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = CertificatePolicy::default();
    // Every CA is made now (valid now); the state machine is told the moments of the renewal.
    let mint = |_| mint_ca(unix_now(), policy.ca_validity);
    // As kept in the Secret and read back.
    let kept = |state: &CaState| CaState::parse(&serde_json::to_vec(state).unwrap()).unwrap();
    let write = |issued: &Issued| {
        std::fs::write(dir.path().join("tls.key.new"), &issued.key).unwrap();
        std::fs::write(dir.path().join("tls.crt.new"), &issued.cert).unwrap();
        std::fs::rename(dir.path().join("tls.key.new"), dir.path().join("tls.key")).unwrap();
        std::fs::rename(dir.path().join("tls.crt.new"), dir.path().join("tls.crt")).unwrap();
    };
    let names = worker_names("ferry-tp-erp", "plant-a");
    let name = "ferry-tp-erp-0.ferry-tp-erp.plant-a.svc";
    let port = free_port();
    let url = format!("https://{name}:{port}/readyz");
    let trusting = |bundle: &str| {
        ferry::install_crypto_provider();
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(bundle.as_bytes()).unwrap())
            .resolve(name, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };

    let first = kept(
        &CaState::step(None, unix_now(), &policy, mint)
            .unwrap()
            .unwrap(),
    );
    write(
        &first
            .issuer()
            .unwrap()
            .issue(&names, unix_now(), &policy)
            .unwrap(),
    );
    let _worker = start(dir.path(), port);
    let old_bundle = first.bundle();
    eventually_ok(
        &trusting(&old_bundle),
        &url,
        "verified by the first bundle",
        dir.path(),
    )
    .await;

    // Renewal begins: the bundle holds both CAs, the worker's certificate is unchanged.
    let window = policy.ca_renew_before.as_secs() as i64;
    let begins = first.signing.not_after - window;
    let renewing = kept(
        &CaState::step(Some(&first), begins, &policy, mint)
            .unwrap()
            .unwrap(),
    );
    assert_eq!(renewing.signing.name, first.signing.name);
    let new_bundle = renewing.bundle();
    assert!(new_bundle.contains(first.signing.cert.trim_end()));
    trusting(&old_bundle)
        .get(&url)
        .send()
        .await
        .expect("old bundle, during the renewal");
    trusting(&new_bundle)
        .get(&url)
        .send()
        .await
        .expect("new bundle, during the renewal");

    // Halfway: the new CA signs and the worker gets a certificate from it; the bundle read
    // since the renewal began verifies it.
    let handover = first.signing.not_after - window / 2;
    let handed = kept(
        &CaState::step(Some(&renewing), handover, &policy, mint)
            .unwrap()
            .unwrap(),
    );
    assert_ne!(handed.signing.name, first.signing.name);
    assert_eq!(
        handed.bundle().lines().count(),
        new_bundle.lines().count(),
        "the old CA stays trusted"
    );
    write(
        &handed
            .issuer()
            .unwrap()
            .issue(&names, unix_now(), &policy)
            .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    // The worker reloads its certificate: the first bundle alone stops verifying it.
    while trusting(&old_bundle).get(&url).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    trusting(&new_bundle)
        .get(&url)
        .send()
        .await
        .expect("the renewed bundle verifies the new certificate");
    trusting(&handed.bundle())
        .get(&url)
        .send()
        .await
        .expect("so does the bundle after the handover");
}

/// A connection worker given the operator's CA bundle (`--ca-file`, as the operator mounts
/// `ca.crt` into it) sends to a transport whose worker serves a certificate from that CA:
/// verified, delivered to the host. Without the bundle the same target is refused at the
/// handshake and the connection says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_worker_verifies_its_target_with_the_bundle_it_is_given() {
    use common::{TestHost, TestSource, WorkerProc, wait_received};
    use ferry::operator::objects::certificates::{CaState, CertificatePolicy, mint_ca, unix_now};
    use serde_json::json;

    let policy = CertificatePolicy::default();
    let ca = CaState::step(None, unix_now(), &policy, |now| {
        mint_ca(now, policy.ca_validity)
    })
    .unwrap()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let issued = ca
        .issuer()
        .unwrap()
        .issue(&["localhost".to_owned()], unix_now(), &policy)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), &issued.cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &issued.key).unwrap();
    let port = free_port();
    let _transport_worker = start(dir.path(), port);
    let https = {
        ferry::install_crypto_provider();
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.bundle().as_bytes()).unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let base = format!("https://localhost:{port}");
    eventually_ok(
        &https,
        &format!("{base}/readyz"),
        "the transport's worker",
        dir.path(),
    )
    .await;
    let host = TestHost::start().await;
    let put = https
        .put(format!("{base}/v1/transports/default/erp"))
        .bearer_auth("admin-secret")
        .json(&json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "erp", "namespace": "default", "generation": 1},
            "spec": {"host": {"url": host.url()}},
        }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    let source = TestSource::start().await;
    source.put("items", "x", 1);
    let spec = json!({"frequency": "1s", "syncSets": [{
        "name": "items",
        "source": {"http": {"url": source.url("items"), "itemsPointer": "/items"}},
        "target": {"transport": {"name": "erp"}},
    }]});
    let resolved = json!({"transports": {"erp": {
        "endpoint": format!("{base}/v1/transports/default/erp/transactions"),
        "token": "ingest-secret",
    }}});

    // Without the bundle: the platform's roots do not know the operator's CA.
    let stranger = WorkerProc::start(&dir.path().join("stranger")).await;
    stranger
        .put_connection("c", spec.clone(), Some(resolved.clone()))
        .await;
    let refused = stranger
        .wait_connection("c", "the target refused at the handshake", |r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("UnknownIssuer"))
        })
        .await;
    assert!(host.received().is_empty(), "{refused}");

    // With it: verified and delivered.
    let bundle = dir.path().join("ca.crt");
    std::fs::write(&bundle, ca.bundle()).unwrap();
    let trusting = WorkerProc::start_with(
        &dir.path().join("trusting"),
        &["--ca-file", bundle.to_str().unwrap()],
    )
    .await;
    trusting.put_connection("c", spec, Some(resolved)).await;
    wait_received(&host, "x through the TLS transport", |r| {
        r.iter().any(|t| t.transport == "default/erp")
    })
    .await;

    // The CA renewed: the transport's worker serves a certificate of the new CA, the bundle
    // file holds both (as the kubelet swaps it); the running connection worker trusts it
    // within its reload and delivers the next record — no restart.
    let renewed = CaState::step(None, unix_now(), &policy, |now| {
        mint_ca(now, policy.ca_validity)
    })
    .unwrap()
    .unwrap();
    let issued = renewed
        .issuer()
        .unwrap()
        .issue(&["localhost".to_owned()], unix_now(), &policy)
        .unwrap();
    std::fs::write(
        dir.path().join("ca.crt.new"),
        ca.bundle() + &renewed.bundle(),
    )
    .unwrap();
    std::fs::rename(dir.path().join("ca.crt.new"), &bundle).unwrap();
    std::fs::write(dir.path().join("tls.key.new"), &issued.key).unwrap();
    std::fs::write(dir.path().join("tls.crt.new"), &issued.cert).unwrap();
    std::fs::rename(dir.path().join("tls.key.new"), dir.path().join("tls.key")).unwrap();
    std::fs::rename(dir.path().join("tls.crt.new"), dir.path().join("tls.crt")).unwrap();
    let renewed_only = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(renewed.bundle().as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually_ok(
        &renewed_only,
        &format!("{base}/readyz"),
        "the transport's worker serves the new CA's certificate",
        dir.path(),
    )
    .await;
    source.put("items", "y", 2);
    wait_received(
        &host,
        "y after the renewal, the connection worker not restarted",
        |r| r.iter().any(|t| t.id.contains("/y@")),
    )
    .await;
    assert!(
        trusting.log().contains("trusting the renewed CA bundle"),
        "{}",
        trusting.log()
    );
}
