//! What the scenarios need from a cluster: the kubeconfig, kubectl, a namespace of their own,
//! `ferry operator` as a process, pods running `ferry sink` and `ferry source`, ingest into a
//! transport's worker, and polling with a limit.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry::api::{Connection, Transport};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

use super::kubelet::{NAMESPACE_PREFIX, ProcessKubelet};

/// Long enough for a pod to be scheduled and started on a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(180);

/// The scenarios run one at a time: they share the cluster and, with the process kubelet,
/// its Node.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Printed straight to the terminal: the test harness captures `eprintln!`.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

pub struct Env {
    pub kubeconfig: PathBuf,
    pub process_kubelet: bool,
    pub worker_image: String,
}

/// The environment of the suite, or why this scenario is skipped (printed).
pub fn env(scenario: &str) -> Option<Env> {
    let Some(kubeconfig) = std::env::var_os("FERRY_E2E_KUBECONFIG") else {
        say(&format!(
            "SKIPPED e2e {scenario}: FERRY_E2E_KUBECONFIG is not set. Point it at the kubeconfig of a \
             disposable cluster (with FERRY_E2E_PROCESS_KUBELET=1 when it has no kubelet or container runtime)."
        ));
        return None;
    };
    let process_kubelet = std::env::var("FERRY_E2E_PROCESS_KUBELET").as_deref() == Ok("1");
    let worker_image = match std::env::var("FERRY_E2E_WORKER_IMAGE") {
        Ok(image) => image,
        // The process kubelet runs this build's binary whatever the image says.
        Err(_) if process_kubelet => "ferry-e2e.invalid/process-kubelet:local".into(),
        Err(_) => {
            say(&format!(
                "SKIPPED e2e {scenario}: on a cluster with kubelets the worker pods run an image: set \
                 FERRY_E2E_WORKER_IMAGE to the image built from this checkout's Dockerfile."
            ));
            return None;
        }
    };
    Some(Env {
        kubeconfig: PathBuf::from(kubeconfig),
        process_kubelet,
        worker_image,
    })
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    ferry::install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("FERRY_E2E_KUBECONFIG is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    Client::try_from(config).expect("a client")
}

pub struct Cluster {
    pub env: Env,
    pub client: Client,
    pub namespace: String,
    pub kubelet: Option<&'static ProcessKubelet>,
    /// More namespaces of this scenario ([`Cluster::another_namespace`]), removed with it.
    more_namespaces: std::sync::Mutex<Vec<String>>,
}

impl Cluster {
    /// Connect, install `crds/`, start the process kubelet if asked, and create a namespace
    /// for this scenario.
    pub async fn start(env: Env, scenario: &str) -> Cluster {
        // Each scenario has a namespace of its own: two of one name in one run would meet the
        // other's objects, or its namespace still terminating.
        static NAMES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        {
            let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
            assert!(
                !names.iter().any(|n| n == scenario),
                "two e2e scenarios are named {scenario:?}: give each its own name"
            );
            names.push(scenario.to_owned());
        }
        let client = client_from(&env.kubeconfig).await;
        let kubelet = env
            .process_kubelet
            .then(|| ProcessKubelet::get(&env.kubeconfig));
        if let Some(kubelet) = kubelet {
            kubelet.attach();
            say(&format!(
                "e2e {scenario}: pods run as local processes on Node {}",
                kubelet.node
            ));
        }
        install_crds(&env);
        let namespace = format!("{NAMESPACE_PREFIX}{scenario}-{}", std::process::id());
        kubectl(&env, &["create", "namespace", &namespace], None).expect("a namespace");
        Cluster {
            env,
            client,
            namespace,
            kubelet,
            more_namespaces: std::sync::Mutex::default(),
        }
    }

    /// `crds/` as they are in the checkout (also undoing [`Cluster::loosen_crd`]).
    pub fn install_crds(&self) {
        install_crds(&self.env);
    }

    /// Replace the schema of CRD `name` with one that accepts anything, so an object ferry
    /// cannot read can be stored (as one written under an older or hand-edited CRD would be).
    /// Undone by [`Cluster::install_crds`], and by every scenario's start.
    pub fn loosen_crd(&self, name: &str) {
        let patch = json!([{
            "op": "replace",
            "path": "/spec/versions/0/schema/openAPIV3Schema",
            "value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }]);
        kubectl(
            &self.env,
            &[
                "patch",
                "crd",
                name,
                "--type=json",
                "-p",
                &patch.to_string(),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("loosening {name}: {e}"));
        wait_for_schema(&self.env, true);
    }

    /// A second namespace for this scenario (`<its namespace>-<suffix>`), removed with it.
    pub fn another_namespace(&self, suffix: &str) -> String {
        let namespace = format!("{}-{suffix}", self.namespace);
        kubectl(&self.env, &["create", "namespace", &namespace], None).expect("a namespace");
        self.more_namespaces
            .lock()
            .expect("namespaces")
            .push(namespace.clone());
        namespace
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        kubectl(&self.env, &all, None)
    }

    /// `kubectl apply -f -` of YAML, as a user does.
    pub fn apply(&self, yaml: &str) {
        kubectl(
            &self.env,
            &["-n", &self.namespace, "apply", "-f", "-"],
            Some(yaml),
        )
        .unwrap_or_else(|e| panic!("kubectl apply failed: {e}\n{yaml}"));
    }

    /// `kubectl apply -f -` that must fail: answers what kubectl said.
    pub fn apply_refused(&self, yaml: &str) -> String {
        match kubectl(
            &self.env,
            &["-n", &self.namespace, "apply", "-f", "-"],
            Some(yaml),
        ) {
            Ok(out) => panic!("kubectl apply should have been refused: {out}\n{yaml}"),
            Err(e) => e,
        }
    }

    /// `kubectl patch` of a spec field, as a user suspends or starts.
    pub fn patch(&self, what: &str, patch: Value) {
        self.kubectl(&["patch", what, "--type=merge", "-p", &patch.to_string()])
            .unwrap_or_else(|e| panic!("kubectl patch {what}: {e}"));
    }

    pub fn transports(&self) -> Api<Transport> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn connections(&self) -> Api<Connection> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `ferry operator` out of cluster, for this namespace.
    pub fn operator(&self, extra: &[&str]) -> Operator {
        Operator::start(self, extra)
    }

    /// A bare pod running `ferry <args>` and listening on `port`; answers the URL the workers
    /// reach it at: its Service in a real cluster, its pod IP with the process kubelet (no
    /// cluster DNS there).
    pub async fn run_pod(&self, name: &str, args: &[&str], port: u16) -> String {
        let (pod, service) = tool_pod(name, &self.env.worker_image, args, port);
        let apply = PatchParams::apply("ferry-e2e").force();
        // A new namespace's `default` ServiceAccount may not exist yet: admission refuses the
        // pod until the controller has made it.
        eventually(&format!("pod {name} is accepted"), || async {
            self.api::<Pod>()
                .patch(name, &apply, &Patch::Apply(pod.clone()))
                .await
                .ok()
        })
        .await;
        let ready = self.wait_pod_ready(name).await;
        if self.env.process_kubelet {
            let ip = ready["status"]["podIP"]
                .as_str()
                .expect("pod IP")
                .to_owned();
            format!("http://{ip}:{port}")
        } else {
            self.api::<k8s_openapi::api::core::v1::Service>()
                .patch(name, &apply, &Patch::Apply(service))
                .await
                .expect("service created");
            format!("http://{name}.{}.svc:{port}", self.namespace)
        }
    }

    /// Delete a pod now and wait until nothing answers at `address` any more: a force-deleted
    /// pod's object goes at once, but its process (on a real kubelet too) stops only later.
    pub async fn delete_pod_now_and_wait(&self, name: &str, address: &str) {
        self.delete_pod_now(name).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        eventually(&format!("{address} stops answering"), || async {
            http.get(address).send().await.is_err().then_some(())
        })
        .await;
    }

    /// Delete a pod now (its object at once; its process soon after).
    pub async fn delete_pod_now(&self, name: &str) {
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let _ = self.api::<Pod>().delete(name, &now).await;
        eventually(&format!("pod {name} is gone"), || async {
            match self.api::<Pod>().get_opt(name).await {
                Ok(None) => Some(()),
                _ => None,
            }
        })
        .await;
    }

    /// Wait until pod `name` is Ready and not being deleted (a pod's Ready condition stays true
    /// while it terminates); answers the pod.
    pub async fn wait_pod_ready(&self, name: &str) -> Value {
        eventually(&format!("pod {name} is Ready"), || async {
            let pod = self.api::<Pod>().get_opt(name).await.ok()??;
            if pod.metadata.deletion_timestamp.is_some() {
                return None;
            }
            // Another Ready node (a previous run's, another harness's) took the pod: it will
            // never start here, so say so now instead of after the whole wait.
            if let (Some(kubelet), Some(bound)) = (
                self.kubelet,
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            ) {
                assert_eq!(
                    bound, kubelet.node,
                    "pod {name} was bound to node {bound}, not to the process kubelet's node {}: \
                     delete that node (kubectl delete node {bound}) or cordon it",
                    kubelet.node
                );
            }
            let ready = pod
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then(|| serde_json::to_value(&pod).expect("json"))
        })
        .await
    }

    /// SIGKILL a worker: the process kubelet kills its process (the pod stays, the container
    /// restarts); on a real node the pod is force-deleted, the closest a client gets.
    pub async fn kill9_worker(&self, pod: &str) {
        match self.kubelet {
            Some(kubelet) => assert!(
                kubelet.kill9(&self.namespace, pod),
                "pod {pod} runs on the process kubelet"
            ),
            None => {
                self.kubectl(&["delete", "pod", pod, "--grace-period=0", "--force"])
                    .expect("force delete");
            }
        }
    }

    /// SIGSTOP (`-STOP`) or SIGCONT (`-CONT`) a worker's process (process kubelet only).
    pub fn signal_worker(&self, pod: &str, signal: &str) {
        let kubelet = self.kubelet.expect("signals need the process kubelet");
        assert!(
            kubelet.signal(&self.namespace, pod, signal),
            "pod {pod} runs on the process kubelet"
        );
    }

    /// One transaction into a transport's worker, with its ingest token: straight to the pod IP
    /// with the process kubelet, through the API server's pod proxy otherwise (`Ferry-Token`,
    /// since the proxy consumes `Authorization`). Answers status and body.
    pub async fn ingest(&self, transport: &str, payload: &str) -> (u16, Value) {
        self.ingest_with_token_of(transport, transport, payload)
            .await
    }

    /// POST a transaction to `transport` with the ingest token of `token_of` (another
    /// transport's, to check they are kept apart). Every transport's own Secret holds its
    /// producers' token; a pooled one is at the worker its status names.
    pub async fn ingest_with_token_of(
        &self,
        transport: &str,
        token_of: &str,
        payload: &str,
    ) -> (u16, Value) {
        self.try_ingest(transport, token_of, payload)
            .await
            .unwrap_or_else(|e| panic!("the worker of {transport} answers: {e}"))
    }

    /// [`Cluster::ingest_with_token_of`], answering why when the worker does not answer (a
    /// worker being killed).
    pub async fn try_ingest(
        &self,
        transport: &str,
        token_of: &str,
        payload: &str,
    ) -> Result<(u16, Value), String> {
        let token = self.ingest_token(token_of).await;
        self.ingest_with(transport, &token, payload).await
    }

    /// Key `key` of Secret `name`, as text.
    pub async fn secret_key(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.api::<Secret>().get_opt(name).await.ok()??;
        let value = secret.data?.get(key)?.0.clone();
        String::from_utf8(value).ok()
    }

    /// A client for the worker pod `pod` (at `ip`, its pod IP) as a producer or `kubectl`
    /// holding Secret `secret` makes it, and the base URL: with the CA bundle in the Secret
    /// (`ca.crt`: the operator's --worker-tls), verified TLS to the name its certificate names
    /// (`<pod>.<worker>.<namespace>.svc`, resolved to the pod IP: there is no cluster DNS with
    /// the process kubelet); plain HTTP to the pod IP otherwise.
    pub async fn worker_http(
        &self,
        secret: &str,
        pod: &str,
        ip: &str,
    ) -> (reqwest::Client, String) {
        let bundle = self.secret_key(secret, "ca.crt").await;
        self.worker_http_trusting(bundle.as_deref(), pod, ip)
    }

    /// [`Cluster::worker_http`] with the bundle a producer read at some time (`None`: plain).
    pub fn worker_http_trusting(
        &self,
        bundle: Option<&str>,
        pod: &str,
        ip: &str,
    ) -> (reqwest::Client, String) {
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // Each request its own handshake: what the worker serves now is verified.
            .pool_max_idle_per_host(0);
        match bundle {
            None => (
                builder.build().expect("client"),
                format!("http://{ip}:8080"),
            ),
            Some(bundle) => {
                ferry::install_crypto_provider();
                let set = pod.rsplit_once('-').map_or(pod, |(set, _)| set);
                let name = format!("{pod}.{set}.{}.svc", self.namespace);
                let address = std::net::SocketAddr::new(ip.parse().expect("a pod IP"), 8080);
                let certificates = reqwest::Certificate::from_pem_bundle(bundle.as_bytes())
                    .expect("ca.crt is a PEM bundle");
                let http = builder
                    .tls_certs_only(certificates)
                    .resolve(&name, address)
                    .build()
                    .expect("client");
                (http, format!("https://{name}:8080"))
            }
        }
    }

    /// The CA bundle the operator published in `namespace` (ConfigMap `ferry-ca`, `ca.crt`).
    pub fn published_bundle(&self, namespace: &str) -> Result<String, String> {
        kubectl(
            &self.env,
            &[
                "-n",
                namespace,
                "get",
                "configmap",
                "ferry-ca",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
            None,
        )
    }

    /// The ingest token in the producers' Secret of transport `name`.
    pub async fn ingest_token(&self, name: &str) -> String {
        let secret = ferry::operator::objects::builders::worker_name("tp", name);
        self.secret_key(&secret, "ingest-token")
            .await
            .expect("the transport's Secret with an ingest token")
    }

    /// POST a transaction to `transport`'s worker with `token`; answers the status and body.
    pub async fn ingest_with(
        &self,
        transport: &str,
        token: &str,
        payload: &str,
    ) -> Result<(u16, Value), String> {
        let placement = self
            .transports()
            .get(transport)
            .await
            .ok()
            .and_then(|t| t.status)
            .and_then(|s| s.placement);
        let pod = match &placement {
            Some(placement) => placement.worker.clone(),
            None => format!(
                "{}-0",
                ferry::operator::objects::builders::worker_name("tp", transport)
            ),
        };
        let route = format!("/v1/transports/{}/{transport}/transactions", self.namespace);
        // A producer reads the bundle where it reads its token.
        let secret = ferry::operator::objects::builders::worker_name("tp", transport);
        if self.env.process_kubelet {
            let ready = self.wait_pod_ready(&pod).await;
            let ip = ready["status"]["podIP"].as_str().expect("pod IP");
            let (http, base) = self.worker_http(&secret, &pod, ip).await;
            let response = http
                .post(format!("{base}{route}"))
                .timeout(Duration::from_secs(30))
                .header("Ferry-Token", token)
                .header("Content-Type", "application/json")
                .body(payload.to_owned())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            Ok((status, response.json().await.unwrap_or(Value::Null)))
        } else {
            let scheme = match self.secret_key(&secret, "ca.crt").await {
                Some(_) => "https:",
                None => "",
            };
            let path = format!(
                "/api/v1/namespaces/{}/pods/{scheme}{pod}:8080/proxy{route}",
                self.namespace
            );
            let request = http::Request::post(path)
                .header("Ferry-Token", token)
                .header("Content-Type", "application/json")
                .body(payload.as_bytes().to_vec())
                .expect("request");
            let response = self
                .client
                .send(request.map(Into::into))
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        }
    }

    /// Wait until the transport's status passes `check`; answers the status.
    pub async fn wait_transport(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_status(self.transports(), name, what, check).await
    }

    pub async fn wait_pool(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_status(self.api::<ferry::api::WorkerPool>(), name, what, check)
            .await
    }

    pub async fn wait_connection(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_status(self.connections(), name, what, check)
            .await
    }

    async fn wait_status<K>(
        &self,
        api: Api<K>,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        eventually(&format!("{} {name}: {what}", K::kind(&())), || async {
            let object = api.get_opt(name).await.ok()??;
            let status = serde_json::to_value(object).ok()?["status"].take();
            (!status.is_null() && check(&status)).then_some(status)
        })
        .await
    }

    /// Record every status the API server hands out for the namespace's Connections, in order.
    pub fn record_connections(&self) -> StatusLog {
        record_statuses(self.connections())
    }

    /// Record every status the API server hands out for the namespace's Transports, in order.
    pub fn record_transports(&self) -> StatusLog {
        record_statuses(self.transports())
    }

    /// With the process kubelet: hold pod `name` away (not started, not restarted) until the
    /// answer is dropped. `None` on a cluster with kubelets, which cannot be asked that.
    pub fn hold_pod(&self, name: &str) -> Option<super::kubelet::Held<'static>> {
        self.kubelet
            .map(|kubelet| kubelet.hold(&self.namespace, name))
    }

    pub fn pod_log(&self, pod: &str) -> String {
        match self.kubelet {
            Some(kubelet) => kubelet.log(&self.namespace, pod),
            None => self
                .kubectl(&["logs", pod, "--tail=200"])
                .unwrap_or_default(),
        }
    }
}

impl Drop for Cluster {
    /// Remove what the scenario made, even when it failed: the finalizers go first so the
    /// namespace does not wait for an operator that is no longer running.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let pods = self
                .kubectl(&["get", "pods", "-o", "name"])
                .unwrap_or_default();
            for pod in pods.lines().filter_map(|p| p.strip_prefix("pod/")) {
                say(&format!("--- pod {pod} log ---\n{}", self.pod_log(pod)));
            }
            let _ = self
                .kubectl(&[
                    "get",
                    "workerpools,transports,connections,pods,pvc",
                    "-o",
                    "yaml",
                ])
                .map(|all| say(&format!("--- objects ---\n{all}")));
        }
        let more = std::mem::take(&mut *self.more_namespaces.lock().expect("namespaces"));
        for namespace in std::iter::once(self.namespace.clone()).chain(more) {
            self.remove_namespace(&namespace);
        }
    }
}

impl Cluster {
    /// Remove a namespace of the scenario and its pods: the finalizers go first so the
    /// namespace does not wait for an operator that is no longer running.
    fn remove_namespace(&self, namespace: &str) {
        let in_it = |args: &[&str]| {
            let mut all = vec!["-n", namespace];
            all.extend_from_slice(args);
            kubectl(&self.env, &all, None)
        };
        if let Ok(names) = in_it(&["get", "workerpools,transports,connections", "-o", "name"]) {
            for name in names.lines().filter(|n| !n.is_empty()) {
                let _ = in_it(&[
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        if let Some(kubelet) = self.kubelet {
            kubelet.end_namespace(namespace);
        }
        // Waited for, so the next scenario starts on a clean cluster: the process kubelet
        // finishes the deletion of the namespace's pods meanwhile.
        if let Err(e) = kubectl(
            &self.env,
            &["delete", "namespace", namespace, "--timeout=120s"],
            None,
        ) {
            say(&format!("e2e: namespace {namespace} is not gone: {e}"));
        }
        if let Some(kubelet) = self.kubelet {
            kubelet.detach(namespace);
        }
    }
}

/// Every status of `api`'s objects, in the order the API server hands them out (a watch
/// misses none, and lists what there is when it starts).
fn record_statuses<K>(api: Api<K>) -> StatusLog
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    let log: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let seen = log.clone();
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(object)) = stream.next().await {
            let name = kube::ResourceExt::name_any(&object);
            let status = serde_json::to_value(&object).expect("json")["status"].take();
            if !status.is_null() {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name, status));
            }
        }
    });
    StatusLog { seen: log, task }
}

/// Statuses in the order they were written.
pub struct StatusLog {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    pub fn entries(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The status values of one connection, consecutive repeats folded.
    pub fn values(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        for (n, status) in self.entries() {
            let value = status["status"].as_str().unwrap_or("").to_owned();
            if n == name && values.last() != Some(&value) {
                values.push(value);
            }
        }
        values
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pod running `ferry <args>` (sink, source) listening on `port`, and its Service.
pub fn tool_pod(name: &str, image: &str, args: &[&str], port: u16) -> (Value, Value) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "args": args,
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1},
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false},
            }],
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": port}]},
    });
    (pod, service)
}

/// `crds/` applied server-side (forced: this checkout's CRDs win) and Established.
fn install_crds(env: &Env) {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    kubectl(
        env,
        &["apply", "--server-side", "--force-conflicts", "-f", crds],
        None,
    )
    .expect("crds/ applies");
    kubectl(
        env,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/transports.ferry.dev",
            "crd/connections.ferry.dev",
        ],
        None,
    )
    .expect("the CRDs are established");
    wait_for_schema(env, false);
}

/// Wait until the API server validates Transports with the loose schema or with ferry's own
/// (it picks up a changed CRD a moment after the write): a server-side dry run of a Transport
/// without the required `spec.host` is accepted only by the loose one.
fn wait_for_schema(env: &Env, loose: bool) {
    let probe = r#"{"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "schema-probe", "namespace": "default"}, "spec": {}}"#;
    let deadline = Instant::now() + WAIT;
    while kubectl(env, &["create", "--dry-run=server", "-f", "-"], Some(probe)).is_ok() != loose {
        assert!(
            Instant::now() < deadline,
            "the Transport schema did not become {}",
            if loose { "loose" } else { "ferry's" }
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn kubectl(env: &Env, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut command = Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("kubectl: {e}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Poll `probe` until it answers; panics naming `what` after [`WAIT`].
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, probe: impl Fn() -> F) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `ferry operator` as a process, as a user runs it out of cluster.
pub struct Operator {
    child: Option<Child>,
    pub listen: SocketAddr,
    log: PathBuf,
    args: Vec<String>,
    kubeconfig: PathBuf,
}

impl Operator {
    fn start(cluster: &Cluster, extra: &[&str]) -> Operator {
        let mut args = vec!["--namespace", &cluster.namespace, "--status-interval", "1s"];
        args.extend(extra);
        Operator::with(cluster, &args)
    }

    /// `ferry operator` with these arguments, besides where it listens and the worker image
    /// (and direct worker access with the process kubelet).
    pub fn with(cluster: &Cluster, extra: &[&str]) -> Operator {
        Operator::as_user(cluster, cluster.env.kubeconfig.clone(), extra)
    }

    /// [`Operator::with`], as the identity of another `kubeconfig`.
    pub fn as_user(cluster: &Cluster, kubeconfig: PathBuf, extra: &[&str]) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut args: Vec<String> = [
            "operator",
            "--listen",
            &listen.to_string(),
            "--worker-image",
            &cluster.env.worker_image,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if cluster.env.process_kubelet {
            // The API server refuses to proxy to loopback pod IPs.
            args.extend(["--worker-access".into(), "direct".into()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = std::env::temp_dir().join(format!(
            "ferry-e2e-operator-{}-{port}.log",
            cluster.namespace
        ));
        let mut operator = Operator {
            child: None,
            listen,
            log,
            args,
            kubeconfig,
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "ferry=debug")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out));
        // Profiling (benchmarks): FERRY_E2E_HEAPTRACK=<dir> records each operator's heap with
        // heaptrack's preload library, raw, into <dir>/operator-<n>.raw
        // (`heaptrack_interpret < F | gzip > F.gz; heaptrack_print F.gz`).
        if let Some(dir) = std::env::var_os("FERRY_E2E_HEAPTRACK") {
            static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            command
                .env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env(
                    "DUMP_HEAPTRACK_OUTPUT",
                    std::path::Path::new(&dir).join(format!("operator-{n}.raw")),
                );
        }
        let child = command.spawn().expect("ferry operator starts");
        self.child = Some(child);
    }

    /// The operator process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What `/readyz` says, if it answers.
    pub async fn readyz(&self) -> Option<String> {
        let response = reqwest::get(format!("http://{}/readyz", self.listen))
            .await
            .ok()?;
        response.text().await.ok()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.listen))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("text")
    }

    /// SIGSTOP: the operator sees nothing and does nothing until [`Operator::resume`] (as a
    /// process starved of CPU or a paused node), its connections kept.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Operator::pause`]: it goes on with what its watches missed meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the operator runs");
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {pid}");
    }

    /// SIGTERM and wait: the lease is released and the controllers stop.
    pub fn terminate(&mut self) {
        if self.child.is_some() {
            // A paused one takes SIGTERM only once it goes on.
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            super::kubelet::terminate(&mut child, Duration::from_secs(20));
        }
    }

    /// SIGKILL: nothing of the shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Kill -9 and start again with `flag` set to `value` (an upgrade's new flags).
    pub fn restart_with(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(at) if at + 1 < self.args.len() => self.args[at + 1] = value.to_owned(),
            _ => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
        self.restart();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            say(&format!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                self.log()
            ));
        }
        self.terminate();
    }
}
