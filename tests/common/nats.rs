#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used)] // a failure here is the test failing
//! A NATS JetStream cluster of three servers on loopback, like the e2e control plane: real
//! processes (the official binary, `.ci/get-nats-server.py`), `sync_interval: always`, each
//! node can be killed with -9 and started again on its own data.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{WAIT, client, free_port};

/// The server binary: `FERRY_NATS_SERVER`, or the pinned one fetched once under target/.
pub fn nats_server() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("FERRY_NATS_SERVER") {
                return PathBuf::from(path);
            }
            let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../ci-tools");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/get-nats-server.py");
            let out = Command::new("python3")
                .arg(&script)
                .arg(&tools)
                .stderr(Stdio::inherit())
                .output()
                .expect("python3 runs .ci/get-nats-server.py");
            assert!(out.status.success(), "cannot fetch the NATS server");
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

pub struct Node {
    pub name: String,
    pub port: u16,
    pub monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl NatsCluster {
    /// Three nodes, started and with a JetStream meta leader.
    pub async fn start() -> Self {
        Self::start_nodes(3).await
    }

    pub async fn start_nodes(count: usize) -> Self {
        // A port chosen free can be taken by another test before the server binds it: a node
        // that exits at start is started again, on new ports.
        for _ in 0..3 {
            let mut cluster = Self::configure(count);
            for i in 0..count {
                cluster.start_node(i);
            }
            if cluster.started().await {
                cluster.wait_ready().await;
                return cluster;
            }
            eprintln!(
                "a NATS node exited at start (a port taken?); again on new ports:\n{}",
                cluster.logs()
            );
        }
        panic!("the NATS cluster does not start");
    }

    /// Every node still runs once all answer /healthz, or one has exited.
    async fn started(&mut self) -> bool {
        let client = client();
        let deadline = Instant::now() + WAIT;
        loop {
            let mut healthy = 0;
            for node in &mut self.nodes {
                if node
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
                {
                    return false;
                }
                healthy += usize::from(answers(&client, node.monitor).await);
            }
            if healthy == self.nodes.len() || Instant::now() > deadline {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn configure(count: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster_ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (port, monitor) = (free_port(), free_port());
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            let cluster = if count > 1 {
                format!(
                    "cluster {{ name: ferry-test, listen: \"127.0.0.1:{cluster_port}\", routes: [{routes}] }}"
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n{cluster}\n",
                    store.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                port,
                monitor,
                config,
                child: None,
            });
        }
        Self { dir, nodes }
    }

    /// Every node's client URL, comma-separated (as a pool's `url`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} runs already", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&node.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        node.child = Some(child);
    }

    /// kill -9: no goodbye to its peers, nothing flushed beyond what was synced.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every running node answers /healthz (a JetStream meta leader is known).
    pub async fn wait_ready(&self) {
        let client = client();
        let deadline = Instant::now() + WAIT;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                if answers(&client, node.monitor).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} is not healthy:\n{}",
                    node.name,
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {} ---\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The node with this monitoring port answers /healthz.
async fn answers(client: &reqwest::Client, monitor: u16) -> bool {
    client
        .get(format!("http://127.0.0.1:{monitor}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
