//! The process kubelet (`FERRY_E2E_PROCESS_KUBELET=1`): on a control plane made only of
//! kube-apiserver, kube-controller-manager and kube-scheduler it stands in for a kubelet and a
//! volume provisioner, so StatefulSets, PVCs and pods behave as on a real node:
//!
//! - registers a Ready Node (status and a `kube-node-lease` Lease, renewed every 10 s) while a
//!   scenario runs, and deletes it with its Lease and the scenario's volumes when it ends;
//! - binds each pending PVC of a test namespace to a PersistentVolume on a local directory
//!   (pre-bound through `claimRef`; the scheduler waits for that binding before it places a pod),
//!   unless it names a StorageClass the cluster does not have;
//! - runs each pod scheduled to the Node as a local `ferry` process with the pod's arguments and
//!   environment, its volume mounts mapped to local directories, its own loopback address
//!   (127.0.0.N, kept per pod name, so a recreated pod keeps its IP) as pod IP;
//! - writes a pod's Secret volumes again every few seconds while it runs, as a kubelet
//!   refreshes them (a renewed certificate or rotated token reaches the running process);
//! - keeps the pod status true: phase, podIP, Ready from the container's readiness probe,
//!   restarts (a killed process is started again, restartCount + 1), and finishes deletions;
//! - holds a pod of a name away when a scenario asks ([`ProcessKubelet::hold`]): a new pod of
//!   that name is not started and a process of it that exits is not started again (its status
//!   says `CrashLoopBackOff`, as a node's during its back-off) until the hold is dropped, so a
//!   scenario can see what the operator shows while a worker is away, whatever the machine's
//!   speed.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret},
        storage::v1::StorageClass,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// Namespaces the kubelet serves: the suite's own, nothing else on the cluster.
pub const NAMESPACE_PREFIX: &str = "ferry-e2e-";
const MANAGER: &str = "ferry-e2e-kubelet";

struct Running {
    key: String,
    ip: String,
    child: Child,
    /// The command line, to start it again after it exits.
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    restarts: i32,
    ready: bool,
    started: Timestamp,
    readiness: Option<HttpProbe>,
    container: String,
    image: String,
    /// Exited while held: reported waiting, started again once the hold goes.
    held_down: bool,
    /// Its Secret volumes, refreshed while it runs as a kubelet does.
    secrets: Vec<SecretFiles>,
    /// A ready pod is probed again every [`READY_PROBE_PERIOD`]; this many failures in a row
    /// make it not ready (a process that hangs), as a kubelet's failureThreshold.
    last_probe: Instant,
    failures: u32,
}

/// How often a ready pod's readiness is probed again, and how many failures in a row make it
/// not ready (a kubelet's periodSeconds and failureThreshold).
const READY_PROBE_PERIOD: Duration = Duration::from_secs(2);
const READY_FAILURE_THRESHOLD: u32 = 3;

/// A Secret's keys written to a pod's volume directory.
#[derive(Clone)]
struct SecretFiles {
    namespace: String,
    name: String,
    items: Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    dir: PathBuf,
}

/// How often the Secret volumes of running pods are written again from their Secrets (a
/// kubelet's sync period is about a minute; shorter here, so scenarios about a renewed
/// certificate or token do not wait).
const SECRET_REFRESH: Duration = Duration::from_secs(5);

/// Write every running pod's Secret volumes again from the Secrets as they are now; a Secret
/// that is gone leaves the files as they were (as on a node).
async fn refresh_secrets(client: &Client, state: &Arc<Mutex<State>>) {
    let mounts: Vec<SecretFiles> = {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .running
            .values()
            .flat_map(|r| r.secrets.iter().cloned())
            .collect()
    };
    for m in mounts {
        let _ = write_secret(client, &m.namespace, &m.name, m.items.as_deref(), &m.dir).await;
    }
}

#[derive(Default)]
struct State {
    running: HashMap<String, Running>,
    ips: HashMap<String, String>,
    /// Namespaces whose scenario ended: their pods are stopped and not started again.
    ended: HashSet<String>,
    /// Pods (`namespace/name`) held away: not started, not restarted.
    held: HashSet<String>,
}

pub struct ProcessKubelet {
    pub node: String,
    state: Arc<Mutex<State>>,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
}

/// Asked of the kubelet's own thread, which answers when it is done.
enum Request {
    /// Register the Node again if a scenario's end removed it.
    Attach(std::sync::mpsc::Sender<()>),
    /// A scenario ended: remove its pods, its volumes, and the Node with its Lease, so no
    /// Ready Node of this suite is left to attract another run's pods.
    Detach(String, std::sync::mpsc::Sender<()>),
}

static KUBELET: OnceLock<ProcessKubelet> = OnceLock::new();

impl ProcessKubelet {
    /// The one kubelet of this test process, started on first use in a thread of its own (the
    /// tests' runtimes come and go).
    pub fn get(kubeconfig: &Path) -> &'static ProcessKubelet {
        KUBELET.get_or_init(|| {
            let node = std::env::var("FERRY_E2E_NODE").unwrap_or_else(|_| "ferry-e2e-node".into());
            let dir =
                std::env::temp_dir().join(format!("ferry-e2e-kubelet-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("kubelet directory");
            let (requests, received) = tokio::sync::mpsc::unbounded_channel();
            let kubelet = ProcessKubelet {
                node: node.clone(),
                state: Arc::new(Mutex::new(State::default())),
                requests,
            };
            let state = kubelet.state.clone();
            let kubeconfig = kubeconfig.to_owned();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("kubelet runtime");
                runtime.block_on(async move {
                    let client = super::cluster::client_from(&kubeconfig).await;
                    register_node(&client, &node).await;
                    let _ = ready_tx.send(());
                    run(client, node, dir, state, received).await;
                });
            });
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the process kubelet registered its Node");
            kubelet
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILL the process of pod `namespace/name`; the kubelet starts it again, as a node does
    /// with a container that died. Answers whether it was running.
    pub fn kill9(&self, namespace: &str, name: &str) -> bool {
        let key = format!("{namespace}/{name}");
        let mut state = self.lock();
        match state.running.values_mut().find(|r| r.key == key) {
            Some(running) => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                true
            }
            None => false,
        }
    }

    /// Send `signal` (`-STOP`, `-CONT`) to the process of pod `namespace/name`: a worker that
    /// hangs (its readiness probe fails) and wakes up. Answers whether it was running.
    pub fn signal(&self, namespace: &str, name: &str, signal: &str) -> bool {
        let key = format!("{namespace}/{name}");
        let state = self.lock();
        match state.running.values().find(|r| r.key == key) {
            Some(running) => std::process::Command::new("kill")
                .args([signal, &running.child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success()),
            None => false,
        }
    }

    /// Hold pod `namespace/name` away until the answer is dropped: a new pod of that name is
    /// not started, and its process, once it exits (killed, or its pod deleted), is not started
    /// again.
    pub fn hold(&self, namespace: &str, name: &str) -> Held<'_> {
        let key = format!("{namespace}/{name}");
        self.lock().held.insert(key.clone());
        Held { kubelet: self, key }
    }

    /// The scenario of `namespace` ended: stop its processes (they would outlive the tests).
    pub fn end_namespace(&self, namespace: &str) {
        let stopping: Vec<Running> = {
            let mut state = self.lock();
            state.ended.insert(namespace.to_owned());
            let prefix = format!("{namespace}/");
            let uids: Vec<String> = state
                .running
                .iter()
                .filter(|(_, r)| r.key.starts_with(&prefix))
                .map(|(uid, _)| uid.clone())
                .collect();
            uids.iter()
                .filter_map(|uid| state.running.remove(uid))
                .collect()
        };
        for mut running in stopping {
            stop(&mut running.child);
        }
    }

    /// Make sure the Node is registered (the previous scenario's end removed it).
    pub fn attach(&self) {
        self.ask(Request::Attach);
    }

    /// After `end_namespace`: remove the scenario's pods and volumes, and the Node.
    pub fn detach(&self, namespace: &str) {
        let namespace = namespace.to_owned();
        self.ask(|done| Request::Detach(namespace, done));
    }

    fn ask(&self, request: impl FnOnce(std::sync::mpsc::Sender<()>) -> Request) {
        let (done, finished) = std::sync::mpsc::channel();
        if self.requests.send(request(done)).is_ok()
            && finished.recv_timeout(Duration::from_secs(60)).is_err()
        {
            eprintln!("process kubelet: no answer within 60 s");
        }
    }

    /// The log of pod `namespace/name`'s process, for failure messages.
    pub fn log(&self, namespace: &str, name: &str) -> String {
        let key = format!("{namespace}/{name}");
        let state = self.lock();
        state
            .running
            .values()
            .find(|r| r.key == key)
            .and_then(|r| std::fs::read_to_string(&r.log).ok())
            .unwrap_or_default()
    }
}

/// A pod held away by [`ProcessKubelet::hold`]; dropped, the kubelet starts it again.
pub struct Held<'a> {
    kubelet: &'a ProcessKubelet,
    key: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.kubelet.lock().held.remove(&self.key);
    }
}

fn now() -> String {
    Timestamp::now().to_string()
}

fn arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// The Node as registered (metadata only; the status is written by `node_status`).
pub fn node_object(node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {
            "kubernetes.io/hostname": node, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch(),
        }},
    })
}

/// The Node's status as a kubelet reports it: Ready, no pressure, capacity, addresses.
pub fn node_status(node: &str, now: &str) -> Value {
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "ferry e2e process kubelet",
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources =
        json!({"cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    json!({
        "capacity": resources, "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": "ferry-e2e", "systemUUID": "ferry-e2e", "bootID": "ferry-e2e",
            "kernelVersion": "", "osImage": "ferry e2e process kubelet", "containerRuntimeVersion": "process://ferry",
            "kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// The node's heartbeat Lease in `kube-node-lease`.
pub fn node_lease(node: &str, renew: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": renew},
    })
}

async fn register_node(client: &Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(node_object(node)),
        )
        .await
        .expect("the Node is registered");
    heartbeat(client, node).await;
}

/// The Node's status and its Lease, as a kubelet renews them.
async fn heartbeat(client: &Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": node_status(node, &now())});
    if let Err(e) = nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        eprintln!("process kubelet: node status: {e}");
    }
    lift_not_ready_taint(&nodes, node).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let micro = Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    if let Err(e) = leases
        .patch(
            node,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(node_lease(node, &micro)),
        )
        .await
    {
        eprintln!("process kubelet: node lease: {e}");
    }
}

/// Admission gives a new Node the `node.kubernetes.io/not-ready` taint and the node lifecycle
/// controller lifts it once the Node is Ready; a controller-manager without that controller
/// never does, and every pod would stay Pending. The process kubelet's Node is Ready, so it
/// lifts the taint itself.
async fn lift_not_ready_taint(nodes: &Api<Node>, node: &str) {
    let Ok(current) = nodes.get(node).await else {
        return;
    };
    let taints = current.spec.and_then(|s| s.taints).unwrap_or_default();
    let kept: Vec<_> = taints
        .iter()
        .filter(|t| t.key != "node.kubernetes.io/not-ready")
        .cloned()
        .collect();
    if kept.len() == taints.len() {
        return;
    }
    let patch = json!({"spec": {"taints": kept}});
    if let Err(e) = nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        eprintln!("process kubelet: lifting the not-ready taint: {e}");
    }
}

async fn run(
    client: Client,
    node: String,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
) {
    let mut last_heartbeat = Instant::now();
    let mut last_refresh = Instant::now();
    let mut attached = true;
    // As a kubelet's: an HTTPS probe does not verify the certificate (the pod's own, which
    // the node has no reason to trust).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .tls_danger_accept_invalid_certs(true)
        .build()
        .expect("probe client");
    loop {
        while let Ok(request) = requests.try_recv() {
            match request {
                Request::Attach(done) => {
                    if !attached {
                        register_node(&client, &node).await;
                        last_heartbeat = Instant::now();
                        attached = true;
                    }
                    let _ = done.send(());
                }
                Request::Detach(namespace, done) => {
                    // The ended namespace's pods go first (sync_pods deletes them).
                    if let Err(e) = sync_pods(&client, &node, &dir, &state, &http).await {
                        eprintln!("process kubelet: pods: {e}");
                    }
                    if let Err(e) = remove_volumes(&client, &namespace).await {
                        eprintln!("process kubelet: volumes of {namespace}: {e}");
                    }
                    remove_node(&client, &node).await;
                    attached = false;
                    let _ = done.send(());
                }
            }
        }
        if attached && last_heartbeat.elapsed() > Duration::from_secs(10) {
            heartbeat(&client, &node).await;
            last_heartbeat = Instant::now();
        }
        if let Err(e) = provision(&client, &dir).await {
            eprintln!("process kubelet: volumes: {e}");
        }
        if let Err(e) = sync_pods(&client, &node, &dir, &state, &http).await {
            eprintln!("process kubelet: pods: {e}");
        }
        if last_refresh.elapsed() > SECRET_REFRESH {
            refresh_secrets(&client, &state).await;
            last_refresh = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The Node and its heartbeat Lease are deleted; a missing one is no error.
async fn remove_node(client: &Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for deleted in [
        nodes
            .delete(node, &DeleteParams::default())
            .await
            .map(|_| ()),
        leases
            .delete(node, &DeleteParams::default())
            .await
            .map(|_| ()),
    ] {
        match deleted {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => eprintln!("process kubelet: removing Node {node}: {e}"),
        }
    }
}

/// The volumes provisioned for `namespace`'s claims, with their directories: they would
/// outlive the test process, which deletes released volumes only while it runs.
async fn remove_volumes(client: &Client, namespace: &str) -> Result<(), kube::Error> {
    delete_volumes_where(client, |volume| {
        volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|c| c.namespace.as_deref())
            == Some(namespace)
    })
    .await
}

/// Delete the suite's volumes that `doomed` picks, with their local directories.
async fn delete_volumes_where(
    client: &Client,
    doomed: impl Fn(&PersistentVolume) -> bool,
) -> Result<(), kube::Error> {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let ours = ListParams::default().labels("ferry.dev/e2e-volume=true");
    for volume in volumes
        .list(&ours)
        .await?
        .items
        .iter()
        .filter(|v| doomed(v))
    {
        volumes
            .delete(&volume.name_any(), &DeleteParams::default())
            .await?;
        if let Some(path) = volume.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
            let _ = std::fs::remove_dir_all(&path.path);
        }
    }
    Ok(())
}

/// A PersistentVolume on a local directory, bound in advance to `claim` (its size, access
/// modes and class).
pub fn local_volume(name: &str, claim: &PersistentVolumeClaim, size: &str, path: &Path) -> Value {
    let spec = claim.spec.clone().unwrap_or_default();
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"ferry.dev/e2e-volume": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.storage_class_name.unwrap_or_default(),
            "hostPath": {"path": path.to_string_lossy(), "type": "Directory"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": claim.namespace(), "name": claim.name_any(), "uid": claim.uid()},
        },
    })
}

/// Pending claims of the suite's namespaces get a pre-bound PersistentVolume on a local
/// directory; volumes whose claim is gone are deleted with their directory.
async fn provision(client: &Client, dir: &Path) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    for claim in claims.list(&ListParams::default()).await? {
        let namespace = claim.namespace().unwrap_or_default();
        let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if !namespace.starts_with(NAMESPACE_PREFIX)
            || !pending
            || claim.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(uid) = claim.uid() else { continue };
        let name = format!("ferry-e2e-{uid}");
        if volumes.get_opt(&name).await?.is_some() {
            continue;
        }
        let spec = claim.spec.clone().unwrap_or_default();
        // As a real provisioner: a claim of a class the cluster does not have stays Pending
        // (and so does its pod).
        if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty())
            && classes.get_opt(class).await?.is_none()
        {
            continue;
        }
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".into());
        let path = dir.join("volumes").join(&uid);
        std::fs::create_dir_all(&path).expect("volume directory");
        let volume = local_volume(&name, &claim, &size, &path);
        let volume: PersistentVolume = serde_json::from_value(volume).expect("a PersistentVolume");
        volumes.create(&PostParams::default(), &volume).await?;
    }
    delete_volumes_where(client, |volume| {
        volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
    })
    .await
}

async fn sync_pods(
    client: &Client,
    node: &str,
    dir: &Path,
    state: &Arc<Mutex<State>>,
    http: &reqwest::Client,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let listed = pods.list(&on_node).await?.items;
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());

    // Processes whose pod is gone (deleted with grace 0 by someone else).
    {
        let live: Vec<String> = listed.iter().filter_map(|p| p.uid()).collect();
        let mut state = lock();
        let gone: Vec<String> = state
            .running
            .keys()
            .filter(|uid| !live.contains(uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut running) = state.running.remove(&uid) {
                stop(&mut running.child);
            }
        }
    }

    for pod in listed {
        let namespace = pod.namespace().unwrap_or_default();
        if !namespace.starts_with(NAMESPACE_PREFIX) {
            continue;
        }
        let name = pod.name_any();
        let Some(uid) = pod.uid() else { continue };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let ended = lock().ended.contains(&namespace);
        if pod.metadata.deletion_timestamp.is_some() || ended {
            let running = lock().running.remove(&uid);
            if let Some(mut running) = running {
                stop(&mut running.child);
            }
            let gone = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match api.delete(&name, &gone).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let (known, held) = {
            let state = lock();
            (
                state.running.contains_key(&uid),
                state.held.contains(&format!("{namespace}/{name}")),
            )
        };
        if !known {
            if held {
                continue;
            }
            match start(client, &pod, dir, state).await {
                Ok(running) => {
                    lock().running.insert(uid.clone(), running);
                }
                Err(why) => {
                    eprintln!("process kubelet: cannot start {namespace}/{name}: {why}");
                    continue;
                }
            }
            report(&api, &name, state, &uid).await?;
            continue;
        }
        // Restart a process that exited; probe one that is not ready yet.
        let (changed, probe) = {
            let mut state = lock();
            let running = state.running.get_mut(&uid).expect("known");
            let exited = running.held_down || matches!(running.child.try_wait(), Ok(Some(_)));
            if exited && held {
                // Reported down once; started again when the hold goes.
                let first = !running.held_down;
                running.held_down = true;
                running.ready = false;
                (first, None)
            } else {
                if exited {
                    running.held_down = false;
                    running.restarts += 1;
                    running.ready = false;
                    running.started = Timestamp::now();
                    running.child = spawn(&running.command, &running.env, &running.log);
                }
                // Not ready: probed until it is. Ready: probed again now and then, so a process
                // that hangs stops being ready.
                let again = running.ready
                    && running.readiness.is_some()
                    && running.last_probe.elapsed() >= READY_PROBE_PERIOD;
                (
                    exited,
                    (!running.ready || again)
                        .then(|| (running.ip.clone(), running.readiness.clone(), running.ready)),
                )
            }
        };
        let mut became_ready = false;
        let mut became_unready = false;
        if let Some((ip, readiness, was_ready)) = probe {
            let ready = match readiness {
                Some(probe) => http
                    .get(probe.url(&ip))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => true,
            };
            if let Some(running) = lock().running.get_mut(&uid) {
                running.last_probe = Instant::now();
                if ready {
                    running.failures = 0;
                    if !was_ready {
                        running.ready = true;
                        became_ready = true;
                    }
                } else if was_ready {
                    running.failures += 1;
                    if running.failures >= READY_FAILURE_THRESHOLD {
                        running.ready = false;
                        running.failures = 0;
                        became_unready = true;
                    }
                }
            }
        }
        if changed || became_ready || became_unready {
            report(&api, &name, state, &uid).await?;
        }
    }
    Ok(())
}

/// What a pod's status says of its process.
pub struct PodProcess<'a> {
    pub ip: &'a str,
    pub ready: bool,
    pub since: &'a str,
    pub restarts: i32,
    pub container: &'a str,
    pub image: &'a str,
    pub pid: u32,
    /// Exited and waiting to be started again.
    pub backing_off: bool,
}

/// A running pod's status, as a kubelet writes it.
pub fn pod_status(p: &PodProcess<'_>) -> Value {
    let ready = if p.ready { "True" } else { "False" };
    let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "lastTransitionTime": p.since});
    json!({
        "phase": "Running",
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": p.ip, "podIPs": [{"ip": p.ip}],
        "startTime": p.since,
        "conditions": [
            condition("PodScheduled", "True"), condition("Initialized", "True"),
            condition("ContainersReady", ready), condition("Ready", ready),
        ],
        "containerStatuses": [{
            "name": p.container, "image": p.image, "imageID": "", "containerID": format!("process://{}", p.pid),
            "ready": p.ready, "started": !p.backing_off, "restartCount": p.restarts,
            "state": if p.backing_off {
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting the exited container (held by the e2e scenario)"}})
            } else {
                json!({"running": {"startedAt": p.since}})
            },
        }],
    })
}

/// Write the pod's status as a kubelet would.
async fn report(
    api: &Api<Pod>,
    name: &str,
    state: &Arc<Mutex<State>>,
    uid: &str,
) -> Result<(), kube::Error> {
    let status = {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = state.running.get(uid) else {
            return Ok(());
        };
        json!({"status": pod_status(&PodProcess {
            ip: &r.ip,
            ready: r.ready,
            since: &r.started.to_string(),
            restarts: r.restarts,
            container: &r.container,
            image: &r.image,
            pid: r.child.id(),
            backing_off: r.held_down,
        })})
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map(|_| ())
}

pub fn spawn(command: &[String], env: &[(String, String)], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("pod log");
    Command::new(&command[0])
        .args(&command[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("the pod's process starts")
}

/// SIGTERM, as a kubelet stops a container, then SIGKILL after a grace period.
fn stop(child: &mut Child) {
    terminate(child, Duration::from_secs(10));
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Start the pod's first container as a local `ferry` process.
async fn start(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    state: &Arc<Mutex<State>>,
) -> Result<Running, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let key = format!("{namespace}/{name}");
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let container = spec.containers.first().ok_or("no container")?;
    let run_dir = dir.join("pods").join(pod.uid().unwrap_or_default());
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;

    // Each volume mount becomes a local directory.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut secrets = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("volume {} is not declared", mount.name))?;
        let local = if let Some(claim) = &volume.persistent_volume_claim {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
            let claim = claims
                .get(&claim.claim_name)
                .await
                .map_err(|e| e.to_string())?;
            let volume_name = claim
                .spec
                .and_then(|s| s.volume_name)
                .ok_or("the claim is not bound yet")?;
            let pv = Api::<PersistentVolume>::all(client.clone())
                .get(&volume_name)
                .await
                .map_err(|e| e.to_string())?;
            PathBuf::from(
                pv.spec
                    .and_then(|s| s.host_path)
                    .ok_or("the volume is not a local directory")?
                    .path,
            )
        } else if let Some(secret) = &volume.secret {
            let secret_name = secret.secret_name.clone().unwrap_or_default();
            let path = run_dir.join(&volume.name);
            std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
            write_secret(client, &namespace, &secret_name, None, &path).await?;
            secrets.push(SecretFiles {
                namespace: namespace.clone(),
                name: secret_name,
                items: None,
                dir: path.clone(),
            });
            path
        } else if let Some(projected) = &volume.projected {
            // The Secrets' keys side by side (a worker's tokens); other sources (a service
            // account token, which no pod here uses) are left out.
            let path = run_dir.join(&volume.name);
            std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
            for secret in projected
                .sources
                .iter()
                .flatten()
                .filter_map(|source| source.secret.as_ref())
            {
                write_secret(
                    client,
                    &namespace,
                    &secret.name,
                    secret.items.as_deref(),
                    &path,
                )
                .await?;
                secrets.push(SecretFiles {
                    namespace: namespace.clone(),
                    name: secret.name.clone(),
                    items: secret.items.clone(),
                    dir: path.clone(),
                });
            }
            path
        } else {
            let path = run_dir.join(&volume.name);
            std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
            path
        };
        mounts.push((mount.mount_path.clone(), local));
    }
    let ip = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let taken = state.ips.len();
        state
            .ips
            .entry(key.clone())
            .or_insert_with(|| format!("127.0.{}.{}", 10 + taken / 250, 2 + taken % 250))
            .clone()
    };
    let local = LocalContainer::of(container, &mounts, &ip, &namespace, &name);
    let (command, env, readiness) = (local.command, local.env, local.readiness);
    let log = run_dir.join("log");
    let child = spawn(&command, &env, &log);
    Ok(Running {
        key,
        ip,
        child,
        command,
        env,
        log,
        restarts: 0,
        ready: false,
        started: Timestamp::now(),
        readiness,
        container: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        held_down: false,
        secrets,
        last_probe: Instant::now(),
        failures: 0,
    })
}

/// Secret `name`'s keys as files in `dir`: all of them, or `items` (key → path) only. A missing
/// Secret or key keeps the pod from starting, as on a node. A file whose content changed is
/// replaced whole (written aside, then renamed), as a kubelet swaps a volume's files.
async fn write_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    dir: &Path,
) -> Result<(), String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("Secret {name}: {e}"))?;
    let data = secret.data.unwrap_or_default();
    let files: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in files {
        let value = data
            .get(&key)
            .ok_or_else(|| format!("Secret {name} has no key {key}"))?;
        let file = dir.join(&path);
        if std::fs::read(&file).is_ok_and(|old| old == value.0) {
            continue;
        }
        let aside = dir.join(format!(".{path}.new"));
        std::fs::write(&aside, &value.0).map_err(|e| e.to_string())?;
        std::fs::rename(&aside, &file).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A readiness probe's httpGet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    /// `scheme: HTTPS` (the certificate is not verified, as by a kubelet).
    pub https: bool,
    pub path: String,
    pub port: u16,
}

impl HttpProbe {
    pub fn url(&self, ip: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{ip}:{}{}", self.port, self.path)
    }
}

/// A pod's container as a local process: its command line, environment and readiness probe.
pub struct LocalContainer {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub readiness: Option<HttpProbe>,
}

impl LocalContainer {
    /// Pure: the container's arguments with each mount path replaced by its local directory
    /// and `0.0.0.0:` by the pod's own address; its environment with the downward API filled.
    pub fn of(
        container: &k8s_openapi::api::core::v1::Container,
        mounts: &[(String, PathBuf)],
        ip: &str,
        namespace: &str,
        name: &str,
    ) -> LocalContainer {
        let mut mounts = mounts.to_vec();
        // Longest mount path first, so /a/b wins over /a.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let rewrite = |arg: &str| -> String {
            for (path, local) in &mounts {
                if arg == path {
                    return local.to_string_lossy().into_owned();
                }
                if let Some(rest) = arg.strip_prefix(&format!("{path}/")) {
                    return local.join(rest).to_string_lossy().into_owned();
                }
            }
            arg.replace("0.0.0.0:", &format!("{ip}:"))
        };
        let mut command = vec![env!("CARGO_BIN_EXE_ferry").to_string()];
        command.extend(container.args.iter().flatten().map(|a| rewrite(a)));

        let mut env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
            ("HOSTNAME".to_string(), name.to_owned()),
        ];
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("status.podIP") => ip.to_owned(),
                        Some("metadata.name") => name.to_owned(),
                        Some("metadata.namespace") => namespace.to_owned(),
                        _ => continue,
                    }
                }
                _ => String::new(),
            };
            // `$(NAME)` of a variable defined before it is expanded, as the kubelet does.
            let value = env.iter().fold(value, |value, (name, defined)| {
                value.replace(&format!("$({name})"), defined)
            });
            env.push((var.name.clone(), value));
        }
        // `$(NAME)` in the arguments too, as the kubelet does.
        let command: Vec<String> = command
            .into_iter()
            .map(|arg| {
                env.iter().fold(arg, |arg, (name, defined)| {
                    arg.replace(&format!("$({name})"), defined)
                })
            })
            .collect();
        let readiness = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|get| {
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                let port = match &get.port {
                    IntOrString::Int(port) => *port as u16,
                    IntOrString::String(named) => container
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(named))
                        .map_or(8080, |p| p.container_port as u16),
                };
                HttpProbe {
                    https: get.scheme.as_deref() == Some("HTTPS"),
                    path: get.path.clone().unwrap_or_else(|| "/".into()),
                    port,
                }
            });
        LocalContainer {
            command,
            env,
            readiness,
        }
    }
}
