//! Test harness: a real `ferry` process, and a host server the test controls.
//! Waits poll with generous limits; nothing here asserts how long anything takes.

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)] // each test binary uses a different part

pub mod certs;
pub mod nats;

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn ferry() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn client() -> reqwest::Client {
    ferry::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// One transaction as the host saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub transport: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct HostState {
    answer: u16,
    received: Vec<Received>,
    health_checks: u64,
}

/// A host the test controls: it answers every POST with the status set, records what
/// arrived, and can be stopped (connections refused) and started again on the same port.
pub struct TestHost {
    pub port: u16,
    state: Arc<Mutex<HostState>>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestHost {
    pub async fn start() -> Self {
        let mut host = Self {
            port: free_port(),
            state: Arc::new(Mutex::new(HostState {
                answer: 200,
                ..Default::default()
            })),
            server: None,
        };
        host.up().await;
        host
    }

    /// A port nothing listens on yet; `up()` starts serving it.
    pub fn down_from_the_start() -> Self {
        Self {
            port: free_port(),
            state: Arc::new(Mutex::new(HostState {
                answer: 200,
                ..Default::default()
            })),
            server: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    pub async fn up(&mut self) {
        if self.server.is_some() {
            return;
        }
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let app = Router::new()
            .route("/ingest", post(receive))
            .route("/healthz", get(health))
            .with_state(self.state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, handle));
    }

    /// Stop listening and close every connection: deliveries are refused.
    pub async fn down(&mut self) {
        if let Some((stop, handle)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    pub fn answer(&self, status: u16) {
        self.state.lock().unwrap().answer = status;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn received_ids(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.id).collect()
    }

    pub fn health_checks(&self) -> u64 {
        self.state.lock().unwrap().health_checks
    }
}

async fn receive(
    State(state): State<Arc<Mutex<HostState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut state = state.lock().unwrap();
    let answer = state.answer;
    if (200..300).contains(&answer) {
        state.received.push(Received {
            id: header("ferry-transaction-id").unwrap_or_default(),
            transport: header("ferry-transport").unwrap_or_default(),
            content_type: header("content-type"),
            body: body.to_vec(),
        });
    }
    StatusCode::from_u16(answer).unwrap_or(StatusCode::OK)
}

async fn health(State(state): State<Arc<Mutex<HostState>>>) -> StatusCode {
    let mut state = state.lock().unwrap();
    state.health_checks += 1;
    if (200..300).contains(&state.answer) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A `ferry worker` process with its own data directory and tokens.
pub struct WorkerProc {
    pub dir: PathBuf,
    /// The loopback address it listens on (127.0.0.1, or 127.0.0.N standing in for a pod IP).
    pub ip: String,
    pub port: u16,
    pub admin: String,
    pub ingest: String,
    child: Option<Child>,
    http: reqwest::Client,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl WorkerProc {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[]).await
    }

    /// Listening on `ip:port`, as a worker pod does on its own IP.
    pub async fn start_at(dir: &Path, ip: &str, port: u16) -> Self {
        Self::spawn_new(dir, ip, port, &[]).await
    }

    /// [`WorkerProc::start_at`] with extra arguments (`--tls-cert-file` makes it serve TLS:
    /// its own requests then do not verify, as a kubelet's probe).
    pub async fn start_at_with(dir: &Path, ip: &str, port: u16, args: &[&str]) -> Self {
        Self::spawn_new(dir, ip, port, args).await
    }

    /// With extra command-line arguments.
    pub async fn start_with(dir: &Path, args: &[&str]) -> Self {
        Self::spawn_new(dir, "127.0.0.1", free_port(), args).await
    }

    /// With extra environment variables (the debug build's `FERRY_FAILPOINTS`).
    pub async fn start_with_env(dir: &Path, envs: &[(&str, &str)]) -> Self {
        let mut worker = Self::new(dir, "127.0.0.1", free_port(), &[]);
        worker.envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        worker.spawn().await;
        worker
    }

    async fn spawn_new(dir: &Path, ip: &str, port: u16, args: &[&str]) -> Self {
        let mut worker = Self::new(dir, ip, port, args);
        worker.spawn().await;
        worker
    }

    fn new(dir: &Path, ip: &str, port: u16, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("test dir");
        std::fs::write(dir.join("admin-token"), "admin-secret\n").expect("token");
        std::fs::write(dir.join("ingest-token"), "ingest-secret\n").expect("token");
        Self {
            dir: dir.to_owned(),
            ip: ip.to_owned(),
            port,
            admin: "admin-secret".into(),
            ingest: "ingest-secret".into(),
            child: None,
            http: if args.contains(&"--tls-cert-file") {
                ferry::install_crypto_provider();
                reqwest::Client::builder()
                    .tls_danger_accept_invalid_certs(true)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client")
            } else {
                client()
            },
            args: args.iter().map(|a| a.to_string()).collect(),
            envs: Vec::new(),
        }
    }

    /// The `ferry worker` command line of this worker (its address, data directory, tokens
    /// and extra arguments).
    pub fn command(&self) -> Command {
        let mut command = Command::new(ferry());
        command
            .args(["worker", "--listen", &format!("{}:{}", self.ip, self.port)])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--admin-token-file")
            .arg(self.dir.join("admin-token"))
            .arg("--ingest-token-file")
            .arg(self.dir.join("ingest-token"))
            .args(&self.args);
        command
    }

    fn base(&self) -> String {
        let tls = self.args.iter().any(|a| a == "--tls-cert-file");
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("worker.log"))
            .expect("log file");
        let child = self
            .command()
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "ferry=debug")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("ferry worker starts");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            // Ready: the store is open and the saved resources are hosted again (before
            // that /healthz already answers, /readyz 503).
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.base()))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }

    /// SIGTERM, as the kubelet sends it; answers the exit status and how long the process
    /// took to exit (for the benchmarks' figures; tests never assert it).
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("the worker runs");
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM runs");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = started + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the worker did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id (for measuring its memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start again on the same data directory and port, after a SIGTERM or kill -9.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// Start again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn transport_url(&self, name: &str) -> String {
        format!("{}/v1/transports/default/{name}", self.base())
    }

    pub async fn put_transport(&self, name: &str, spec: Value) -> (u16, Value) {
        self.put_transport_beside(name, spec, json!({})).await
    }

    /// PUT transport `name` with the top-level fields of `beside` next to its spec
    /// (`ingestTokenSha256`, `restart`).
    pub async fn put_transport_beside(
        &self,
        name: &str,
        spec: Value,
        beside: Value,
    ) -> (u16, Value) {
        let mut body = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": spec,
        });
        if let (Some(body), Some(beside)) = (body.as_object_mut(), beside.as_object()) {
            body.extend(beside.clone());
        }
        self.put_json(&self.transport_url(name), &body).await
    }

    /// PUT a JSON body with the admin token; answers (status, body).
    pub async fn put_json(&self, url: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .put(url)
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .expect("PUT answered");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// PUT and expect success.
    pub async fn apply(&self, name: &str, spec: Value) -> Value {
        let (status, body) = self.put_transport(name, spec).await;
        assert!(
            status == 200 || status == 201,
            "PUT {name}: {status} {body}"
        );
        body
    }

    pub async fn report(&self, name: &str) -> Value {
        let r = self
            .http
            .get(self.transport_url(name))
            .header("Ferry-Token", &self.admin)
            .send()
            .await
            .expect("GET answered");
        assert!(r.status().is_success(), "GET {name}: {}", r.status());
        r.json().await.expect("report is JSON")
    }

    /// POST one transaction; answers (status, body).
    pub async fn send(&self, name: &str, payload: &str, id: Option<&str>) -> (u16, Value) {
        self.send_with(name, &self.ingest, payload, id).await
    }

    /// POST one transaction with `token`; answers (status, body).
    pub async fn send_with(
        &self,
        name: &str,
        token: &str,
        payload: &str,
        id: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/transactions", self.transport_url(name)))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(payload.to_owned());
        if let Some(id) = id {
            request = request.header("Ferry-Transaction-Id", id);
        }
        let r = request.send().await.expect("ingest answered");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `/metrics`, labelled as the OpenMetrics text it is.
    pub async fn metrics(&self) -> String {
        let answer = self
            .http
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .expect("metrics answered");
        let content_type = answer.headers().get("content-type").cloned();
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some(ferry::worker::metrics::CONTENT_TYPE)
        );
        answer.text().await.expect("text")
    }

    /// Poll the report until `check` holds; panics with the last report after `WAIT`.
    pub async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        poll(&format!("{name}: {what}"), || self.report(name), check).await
    }

    pub async fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_for(name, state, |r| r["state"] == state).await
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.parse().expect("an IP"), self.port)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Fetch until `check` holds; panics with the last value after `WAIT`.
async fn poll<F: std::future::Future<Output = Value>>(
    what: &str,
    fetch: impl Fn() -> F,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = fetch().await;
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; last report {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `check` holds for what the host received.
pub async fn wait_received(host: &TestHost, what: &str, check: impl Fn(&[Received]) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check(&host.received()) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for the host to receive {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A transport spec delivering to `host` with Store and Forward on.
pub fn spec(host: &TestHost) -> Value {
    json!({"host": {"url": host.url(), "timeout": "2s"}})
}

/// One fetch as the test source saw it: which path, and when it began and ended.
#[derive(Clone, Debug)]
pub struct Fetch {
    pub path: String,
    pub since: Option<String>,
    pub began: Instant,
    pub ended: Instant,
}

#[derive(Default)]
struct SourceState {
    /// path -> records ({"id", "updatedAt", ...})
    records: std::collections::BTreeMap<String, Vec<Value>>,
    fetches: Vec<Fetch>,
    /// path -> how long each answer is held back
    delay: std::collections::BTreeMap<String, Duration>,
    answer: u16,
}

/// A source the test controls: `GET /{path}?updatedSince=W` answers the records of that path
/// whose `updatedAt` is at or after W (an inclusive source), as `{"items": [...]}`.
pub struct TestSource {
    pub port: u16,
    state: Arc<Mutex<SourceState>>,
}

impl TestSource {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(SourceState {
            answer: 200,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new()
            .route("/{path}", get(serve_records))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Add or change a record of `path`.
    pub fn put(&self, path: &str, id: &str, updated_at: u64) {
        let mut state = self.state.lock().unwrap();
        let records = state.records.entry(path.into()).or_default();
        records.retain(|r| r["id"] != id);
        records.push(
            json!({"id": id, "updatedAt": updated_at, "data": format!("{id} v{updated_at}")}),
        );
    }

    pub fn delay(&self, path: &str, delay: Duration) {
        self.state.lock().unwrap().delay.insert(path.into(), delay);
    }

    pub fn answer(&self, status: u16) {
        self.state.lock().unwrap().answer = status;
    }

    pub fn fetches(&self) -> Vec<Fetch> {
        self.state.lock().unwrap().fetches.clone()
    }
}

async fn serve_records(
    State(state): State<Arc<Mutex<SourceState>>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let began = Instant::now();
    let delay = state.lock().unwrap().delay.get(&path).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let since = query.get("updatedSince").cloned();
    let floor: u64 = since.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut state = state.lock().unwrap();
    let answer = state.answer;
    let items: Vec<Value> = state
        .records
        .get(&path)
        .into_iter()
        .flatten()
        .filter(|r| r["updatedAt"].as_u64().unwrap_or(0) >= floor)
        .cloned()
        .collect();
    state.fetches.push(Fetch {
        path,
        since,
        began,
        ended: Instant::now(),
    });
    if answer != 200 {
        return StatusCode::from_u16(answer)
            .unwrap_or(StatusCode::OK)
            .into_response();
    }
    axum::Json(json!({ "items": items })).into_response()
}

impl WorkerProc {
    pub fn connection_url(&self, name: &str) -> String {
        format!("{}/v1/connections/default/{name}", self.base())
    }

    /// PUT a connection, with an optional `resolved` object; answers (status, body).
    pub async fn put_connection(
        &self,
        name: &str,
        spec: Value,
        resolved: Option<Value>,
    ) -> (u16, Value) {
        let mut body = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
            "metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": spec,
        });
        if let Some(resolved) = resolved {
            body["resolved"] = resolved;
        }
        self.put_json(&self.connection_url(name), &body).await
    }

    pub async fn connection(&self, name: &str) -> Value {
        let r = self
            .http
            .get(self.connection_url(name))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("GET answered");
        assert!(
            r.status().is_success(),
            "GET connection {name}: {}",
            r.status()
        );
        r.json().await.expect("JSON")
    }

    pub async fn wait_connection(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        poll(
            &format!("connection {name}: {what}"),
            || self.connection(name),
            check,
        )
        .await
    }
}
