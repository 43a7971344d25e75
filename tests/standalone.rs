//! `ferry standalone` as a user runs it: manifests from files, a real process, real HTTP.

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{TestHost, TestSource, WAIT, client, ferry, free_port};

fn examples(path: &str) -> String {
    format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A standalone process whose stdout lines are collected.
struct Standalone {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Standalone {
    fn start(dir: &std::path::Path, manifests: &[String]) -> Self {
        Self::start_with(dir, manifests, &[])
    }

    /// With more arguments.
    fn start_with(dir: &std::path::Path, manifests: &[String], args: &[&str]) -> Self {
        let port = free_port();
        let mut command = Command::new(ferry());
        command
            .arg("standalone")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if !manifests.is_empty() {
            command.arg("--manifests").args(manifests);
        }
        let mut child = command.spawn().expect("ferry standalone starts");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, port, lines }
    }

    fn wait_line(&self, wanted: &str) {
        let deadline = Instant::now() + WAIT;
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(wanted))
        {
            assert!(
                Instant::now() < deadline,
                "no line {wanted:?} in {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, name: &str) -> String {
        format!(
            "http://127.0.0.1:{}/v1/transports/default/{name}",
            self.port
        )
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

#[test]
fn invalid_manifests_are_rejected_naming_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(ferry())
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--manifests")
        .arg(examples("invalid/transport-ftp-url.yaml"))
        .arg(examples("invalid/connection-two-targets.yaml"))
        .arg(examples("transport-erp.yaml"))
        .output()
        .expect("runs");
    assert!(
        !output.status.success(),
        "started despite invalid manifests"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("transport-ftp-url.yaml: Transport default/erp is invalid: spec.host.url"),
        "{stderr}"
    );
    assert!(stderr.contains("Connection default/crm is invalid: spec.syncSets[0].target: exactly one of transport or http"), "{stderr}");
    assert!(
        stderr.contains("2 problem(s) in the manifests; nothing was started"),
        "{stderr}"
    );

    // The same object twice is an error naming both files.
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    let manifest = "apiVersion: ferry.dev/v1alpha1\nkind: Transport\nmetadata: {name: twin}\nspec: {host: {url: 'http://127.0.0.1:1/x'}}\n";
    std::fs::write(&a, manifest).unwrap();
    std::fs::write(&b, manifest).unwrap();
    let output = Command::new(ferry())
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--manifests")
        .args([&a, &b])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Transport default/twin is defined twice"),
        "{stderr}"
    );

    // YAML that does not parse names the document.
    std::fs::write(&a, "kind: Transport\n---\nspec: [unclosed\n").unwrap();
    let output = Command::new(ferry())
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--manifests")
        .arg(&a)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("document 2 is not valid YAML"));
}

/// A second `ferry standalone` on the data directory of one still running is refused: the
/// store is in use (naming the first process), nothing is wrong with its data, and nothing in
/// the message suggests moving or losing it. The first keeps running with its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_store_is_told_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let first = Standalone::start(dir.path(), &[]);
    first.wait_line("Transport default/demo: ");
    let output = Command::new(ferry())
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(
        stderr.contains("nothing is wrong with its data"),
        "{stderr}"
    );
    if cfg!(target_os = "linux") {
        let holder = format!("pid {}: ", first.child.id());
        assert!(stderr.contains(&holder), "{stderr}");
    }
    for misleading in ["damaged", "lost", "move it"] {
        assert!(!stderr.contains(misleading), "{stderr}");
    }
    let report = get_json(&client(), &first.url("demo")).await;
    assert!(report["state"].is_string(), "the first runs on: {report}");
}

/// Given a certificate and key, standalone serves TLS only (plain HTTP on loopback otherwise),
/// and says so in the endpoints it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::certs::TestCa::new("standalone test CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let standalone = Standalone::start_with(
        dir.path(),
        &[],
        &[
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    standalone.wait_line("Transport default/demo: ");
    ferry::install_crypto_provider();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/v1/transports/default/demo",
        standalone.port
    );
    let report = get_json(&https, &url).await;
    let endpoint = report["endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    assert!(
        client().get(standalone.url("demo")).send().await.is_err(),
        "plain HTTP answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = Standalone::start(dir.path(), &[]);
    standalone.wait_line("Transport default/demo: ");
    let http = client();
    let report = get_json(&http, &standalone.url("demo")).await;
    assert!(
        report["endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/v1/transports/default/demo/transactions")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_manifest_file_and_prints_state_changes() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let file = dir.path().join("t.yaml");
    let manifest = |suspended: bool, url: &str| {
        format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: Transport\nmetadata:\n  name: local\nspec:\n  suspended: {suspended}\n  host:\n    url: {url}\n"
        )
    };
    std::fs::write(&file, manifest(false, &host.url())).unwrap();
    let standalone = Standalone::start(dir.path(), &[file.display().to_string()]);
    standalone.wait_line("Transport default/local: Down (send transactions to");

    let http = client();
    let sent = http
        .post(format!("{}/transactions", standalone.url("local")))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    standalone.wait_line("Transport default/local: Down -> Up");

    // Saving the file with suspended: true suspends it.
    std::fs::write(&file, manifest(true, &host.url())).unwrap();
    standalone.wait_line("Transport default/local: Up -> Suspended");

    // A broken edit changes nothing.
    std::fs::write(&file, manifest(false, "ftp://nowhere")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let report = get_json(&http, &standalone.url("local")).await;
    assert_eq!(report["state"], "Suspended");

    // Removing the object from the file stops hosting it.
    std::fs::write(&file, "# nothing here any more\n").unwrap();
    standalone.wait_line("Transport default/local: removed from the manifests");
    let gone = http.get(standalone.url("local")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

/// "If you start multiple connections one after the other, the connections are queued: the
/// second connection will enter its startup process only after the first connection is
/// running." Seen from the source: each connection's first fetch begins only after the one
/// before it finished its first iteration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_connections_enter_startup_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let source = TestSource::start().await;
    let names = ["c1", "c2", "c3"];
    let mut manifests = String::new();
    for name in names {
        source.put(name, "r", 1);
        // A slow source keeps each startup open long enough to see the others wait.
        source.delay(name, Duration::from_millis(1500));
        manifests.push_str(&format!(
            "---\napiVersion: ferry.dev/v1alpha1\nkind: Connection\nmetadata: {{name: {name}}}\nspec:\n  frequency: 1h\n  syncSets:\n  - name: s\n    source: {{http: {{url: '{}', itemsPointer: /items}}}}\n    target: {{http: {{url: '{}'}}}}\n",
            source.url(name),
            host.url()
        ));
    }
    let file = dir.path().join("connections.yaml");
    std::fs::write(&file, manifests).unwrap();
    let standalone = Standalone::start(dir.path(), &[file.display().to_string()]);
    standalone.wait_line("Connection default/c3: Restarting");

    // While c1 starts, the others wait in order.
    let http = client();
    let url = |name: &str| {
        format!(
            "http://127.0.0.1:{}/v1/connections/default/{name}",
            standalone.port
        )
    };
    let c3 = get_json(&http, &url("c3")).await;
    assert_eq!(
        (c3["status"].as_str(), c3["startupQueuePosition"].as_u64()),
        (Some("Restarting"), Some(2)),
        "{c3}"
    );

    for name in names {
        standalone.wait_line(&format!("Connection default/{name}: Restarting -> Running"));
    }
    let fetches = source.fetches();
    let first = |name: &str| {
        fetches
            .iter()
            .find(|f| f.path == name)
            .cloned()
            .expect("fetched")
    };
    let order: Vec<String> = {
        let mut firsts: Vec<_> = names.iter().map(|n| first(n)).collect();
        firsts.sort_by_key(|f| f.began);
        firsts.into_iter().map(|f| f.path).collect()
    };
    assert_eq!(order, names);
    assert!(
        first("c2").began >= first("c1").ended,
        "c2 started before c1 was running"
    );
    assert!(
        first("c3").began >= first("c2").ended,
        "c3 started before c2 was running"
    );
    assert_eq!(host.received().len(), 3);
}
