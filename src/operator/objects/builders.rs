//! The Kubernetes objects the operator owns for each Connection and Transport with a worker of
//! its own, and for each WorkerPool: a StatefulSet of `ferry worker`s (one, or the pool's
//! replicas) with a volume each for its data directory, a Service for its port (headless for
//! a pool: every worker has a stable DNS name), the producers' Secret with the ingest token and,
//! for a worker of its own, the admin token in a Secret of its own that only the operator reads
//! (a pool's Secret holds its admin token; producers never read it), and the worker's
//! NetworkPolicy (network_policy.rs says what it allows). Pure: the reconciler
//! applies what these return with server-side apply.
//!
//! The objects are built as typed k8s-openapi structs: a misspelt field, a wrong type or a
//! missing value is a compile error, never a reconcile that fails at run time.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ProjectedVolumeSource, ResourceRequirements, SeccompProfile, Secret, SecretProjection,
            SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
            VolumeMount, VolumeProjection, VolumeResourceRequirements,
        },
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::operator::objects::certificates::{
    BUNDLE_KEY, CERT_ANNOTATION, CERT_KEY, Issued, PRIVATE_KEY_KEY, worker_names,
};
use crate::operator::objects::network_policy::{Producers, worker_policy};

use crate::api::{
    Connection, Transport, WorkerPool, connection::DEFAULT_STORAGE_BYTES as CONNECTION_STORAGE,
    storage::ReclaimPolicy, storage::Storage,
    transport::DEFAULT_STORAGE_BYTES as TRANSPORT_STORAGE,
    worker_pool::DEFAULT_STORAGE_BYTES as POOL_STORAGE,
};

/// On a worker's pod template: which admin token it runs with (a short SHA-256 of it).
pub const ADMIN_TOKEN_ANNOTATION: &str = "ferry.dev/admin-token-sha256";

/// The worker's port, in the pod and on the Service.
pub const WORKER_PORT: u16 = crate::wire::PORT;
const DATA_DIR: &str = "/var/lib/ferry";
const TOKENS_DIR: &str = "/etc/ferry/tokens";
/// A pool on JetStream: its NATS login, the CA of its servers, its client certificate.
const NATS_CREDENTIALS_DIR: &str = "/etc/ferry/nats/credentials";
const NATS_CA_DIR: &str = "/etc/ferry/nats/ca";
const NATS_CLIENT_DIR: &str = "/etc/ferry/nats/client";
/// The key of the ingest token in a worker's (or a pooled resource's) Secret: what producers
/// read.
pub const INGEST_TOKEN_KEY: &str = "ingest-token";
/// The key of the admin token: in a dedicated worker's admin Secret ([`admin_secret_name`]), in
/// a pool's Secret, and (before ferry kept the two apart) in a dedicated worker's producers'
/// Secret.
pub const ADMIN_TOKEN_KEY: &str = "admin-token";

/// The Secret that holds a dedicated worker's admin token, which only the operator (and
/// `kubectl ferry`) read: `<worker>-admin`, at most 58 characters. Stable forever, as the
/// worker's name is.
pub fn admin_secret_name(worker: &str) -> String {
    format!("{worker}-admin")
}
/// The distroless "nonroot" user.
const RUN_AS: i64 = 65532;
/// The worker pod's grace period on deletion. The worker's own shutdown deadline
/// (`--shutdown-timeout`, [`WORKER_SHUTDOWN_SECS`]) is a third of it, so the records are
/// saved long before the kubelet's SIGKILL.
pub const TERMINATION_GRACE_SECS: u64 = 30;
pub const WORKER_SHUTDOWN_SECS: u64 = TERMINATION_GRACE_SECS / 3;
// The worker stops (and saves) well before the kubelet kills it.
const _: () = assert!(WORKER_SHUTDOWN_SECS * 2 < TERMINATION_GRACE_SECS);

/// The worker's `--memory-budget` for a pod memory limit: the share the worker's budget
/// module documents, or the worker's default when the limit is unset or not whole bytes.
pub fn memory_budget(resources: &ResourceRequirements) -> u64 {
    use crate::worker::budget::{DEFAULT_BYTES, SHARE_OF_MEMORY_LIMIT};
    resources
        .limits
        .as_ref()
        .and_then(|limits| limits.get("memory"))
        .and_then(|q| q.0.parse::<crate::api::quantity::ByteQuantity>().ok())
        .map_or(DEFAULT_BYTES, |limit| {
            (limit.bytes() / SHARE_OF_MEMORY_LIMIT).max(1 << 20)
        })
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{kind} {name} has no uid yet; it cannot own objects")]
    NoUid { kind: &'static str, name: String },
}

/// The longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// The longest worker name: the StatefulSet controller names its pods `<name>-0` (a hostname,
/// at most 63) and labels them `controller-revision-hash: <name>-<10 characters>` (a label
/// value, at most 63).
pub const MAX_WORKER_NAME: usize = 52;

/// The name of a resource's worker objects: `ferry-<short>-<name>` when that is at most
/// [`MAX_WORKER_NAME`] characters and has no dot (a Service name is a DNS label). Any other
/// name is cut, its dots made dashes, and ends with the first 8 hex digits of the SHA-256 of
/// `ferry-<short>-<name>`: every name the API server accepts gives a name Kubernetes can run,
/// distinct names stay distinct (`a.b` and `a-b` too), and the result never changes (a fixed
/// hash, pinned by a golden test), so a worker keeps its volume across ferry versions.
pub fn worker_name(short: &str, name: &str) -> String {
    let full = format!("ferry-{short}-{name}");
    if full.len() <= MAX_WORKER_NAME && !full.contains('.') {
        return full;
    }
    let hash = crate::stable_hash_hex(&full, 4);
    let keep = MAX_WORKER_NAME - 1 - hash.len();
    let cut: String = full
        .chars()
        .take(keep)
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    format!("{}-{hash}", cut.trim_end_matches('-'))
}

/// Where a pool's worker `worker` (its pod) is reached: its stable DNS name under the pool's
/// headless Service `set` (`scheme`: [`WorkerDefaults::scheme`]).
pub fn pool_worker_url(scheme: &str, set: &str, namespace: &str, worker: &str) -> String {
    format!("{scheme}://{worker}.{set}.{namespace}.svc:{WORKER_PORT}")
}

/// Operator-wide settings for the workers it creates (flags or environment).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerDefaults {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub resources: ResourceRequirements,
    /// Used when a resource's `spec.storage.storageClassName` is unset; None = the cluster's
    /// default class.
    pub storage_class: Option<String>,
    /// The workers' `FERRY_LOG_FORMAT`: the operator's own.
    pub log_format: crate::logging::LogFormat,
    /// Addresses no host, source or target URL may reach: the operator refuses such a spec,
    /// and its workers check again when they connect (`--forbidden-destinations`).
    pub forbidden_destinations: crate::destinations::Forbidden,
    /// Each worker's NetworkPolicy, unless switched off (`--worker-network-policies=false`).
    pub network_policies: Option<crate::operator::objects::network_policy::WorkerNetworkPolicies>,
    /// Workers serve TLS only, with certificates from the operator's CA (`--worker-tls`).
    pub tls: bool,
}

impl WorkerDefaults {
    /// How workers are reached: `https` with `--worker-tls`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

impl Default for WorkerDefaults {
    fn default() -> Self {
        let quantities = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.to_string()),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        Self {
            image: format!("ghcr.io/ferry-dev/ferry:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            resources: ResourceRequirements {
                requests: Some(quantities(&[("cpu", "50m"), ("memory", "64Mi")])),
                limits: Some(quantities(&[("memory", "256Mi")])),
                ..Default::default()
            },
            storage_class: None,
            log_format: crate::logging::LogFormat::default(),
            forbidden_destinations: crate::destinations::Forbidden::default(),
            network_policies: None,
            tls: false,
        }
    }
}

/// The admin and ingest tokens of one worker, and with `--worker-tls` its certificate and the
/// CA bundle. Generated once and kept in its Secrets: the reconciler reads them back rather
/// than generating new ones on every pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerTokens {
    pub admin: String,
    pub ingest: String,
    pub tls: Option<WorkerTls>,
}

/// A worker's serving certificate and the bundle its clients trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerTls {
    pub issued: Issued,
    pub bundle: String,
}

/// What a worker is for: the parts of a Transport or Connection the objects depend on.
pub struct Owner<'a> {
    kind: &'static str,
    /// `tp` or `conn`, in object names.
    short: &'static str,
    name: String,
    namespace: String,
    owner_reference: OwnerReference,
    storage: &'a Storage,
    default_storage_bytes: u64,
    /// 0 for a stopped connection: its worker is scaled to zero. A pool's replicas.
    replicas: i32,
    /// A pool's: its workers' container resources (else the operator's defaults) and where
    /// they may run.
    pool: Option<&'a crate::api::WorkerPoolSpec>,
    /// Who sends transactions to the worker (its NetworkPolicy).
    producers: Producers<'a>,
}

/// `spec.network.ingestFrom` as the worker's producers.
fn producers(network: &Option<crate::api::network::Network>) -> Producers<'_> {
    match network.as_ref().and_then(|n| n.ingest_from.as_deref()) {
        Some(peers) => Producers::These(peers),
        None => Producers::OwnNamespace,
    }
}

/// The resource as its objects' controlling owner; deleting it in the foreground waits for them.
fn owner_reference<K: Resource<DynamicType = ()>>(
    object: &K,
    kind: &'static str,
) -> Result<OwnerReference, BuildError> {
    let mut reference = object
        .controller_owner_ref(&())
        .ok_or_else(|| BuildError::NoUid {
            kind,
            name: object.meta().name.clone().unwrap_or_default(),
        })?;
    reference.block_owner_deletion = Some(true);
    Ok(reference)
}

impl<'a> Owner<'a> {
    pub fn transport(transport: &'a Transport) -> Result<Self, BuildError> {
        Ok(Self {
            kind: "Transport",
            short: "tp",
            name: transport.name_any(),
            namespace: transport.namespace().unwrap_or_else(|| "default".into()),
            owner_reference: owner_reference(transport, "Transport")?,
            storage: &transport.spec.storage,
            default_storage_bytes: TRANSPORT_STORAGE,
            replicas: 1,
            pool: None,
            producers: producers(&transport.spec.network),
        })
    }

    pub fn connection(connection: &'a Connection) -> Result<Self, BuildError> {
        Ok(Self {
            kind: "Connection",
            short: "conn",
            name: connection.name_any(),
            namespace: connection.namespace().unwrap_or_else(|| "default".into()),
            owner_reference: owner_reference(connection, "Connection")?,
            storage: &connection.spec.storage,
            default_storage_bytes: CONNECTION_STORAGE,
            replicas: i32::from(connection.spec.started),
            pool: None,
            producers: Producers::Nobody,
        })
    }

    pub fn pool(pool: &'a WorkerPool) -> Result<Self, BuildError> {
        Ok(Self {
            kind: "WorkerPool",
            short: "wp",
            name: pool.name_any(),
            namespace: pool.namespace().unwrap_or_else(|| "default".into()),
            owner_reference: owner_reference(pool, "WorkerPool")?,
            storage: &pool.spec.storage,
            default_storage_bytes: POOL_STORAGE,
            replicas: pool.spec.replicas,
            pool: Some(&pool.spec),
            producers: producers(&pool.spec.network),
        })
    }

    /// The same, running `replicas` workers (a pool never fewer than its hosting ones).
    pub fn with_replicas(mut self, replicas: i32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Whether `meta` (an existing object of the worker's name) is controlled by this resource:
    /// an owner reference with `controller: true` and the resource's uid. Anything else is
    /// somebody else's object, which the operator must not overwrite or adopt.
    pub fn controls(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> bool {
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == self.uid())
    }

    /// The resource's uid.
    /// What becomes of the worker's volume when the resource is deleted.
    pub fn reclaim_policy(&self) -> ReclaimPolicy {
        self.storage.reclaim_policy
    }

    pub fn uid(&self) -> &str {
        &self.owner_reference.uid
    }

    /// `Transport plant-a/erp`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    /// `ferry-tp-erp`: the StatefulSet, Service and Secret share it. See [`worker_name`].
    pub fn worker_name(&self) -> String {
        worker_name(self.short, &self.name)
    }

    /// The labels of every object and of the pod. `ferry.dev/name` only where the resource's
    /// name is a valid label value (at most 63 characters); a longer one is found through the
    /// owner reference and the `app.kubernetes.io/instance` label instead.
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.extend([
            ("app.kubernetes.io/component".into(), "worker".into()),
            (
                "app.kubernetes.io/managed-by".into(),
                "ferry-operator".into(),
            ),
            ("ferry.dev/kind".into(), self.kind.to_lowercase()),
        ]);
        if self.name.len() <= MAX_LABEL_VALUE {
            labels.insert("ferry.dev/name".into(), self.name.clone());
        }
        labels
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "ferry".into()),
            ("app.kubernetes.io/instance".into(), self.worker_name()),
        ])
    }

    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.worker_name()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner_reference.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The container's resources: a pool's own, else the operator's defaults.
    fn resources<'b>(&'b self, defaults: &'b WorkerDefaults) -> &'b ResourceRequirements {
        self.pool
            .and_then(|pool| pool.resources.as_ref())
            .unwrap_or(&defaults.resources)
    }

    /// Where producers (and the operator, in cluster) reach the worker; a pool's worker, at
    /// its own stable name (`$(POD_NAME)` is expanded by the kubelet).
    pub fn public_url(&self, scheme: &str) -> String {
        match self.pool {
            Some(_) => pool_worker_url(scheme, &self.worker_name(), &self.namespace, "$(POD_NAME)"),
            None => self.service_url(scheme),
        }
    }

    /// Where producers (and the operator, in cluster) reach the worker.
    pub fn service_url(&self, scheme: &str) -> String {
        format!(
            "{scheme}://{}.{}.svc:{WORKER_PORT}",
            self.worker_name(),
            self.namespace
        )
    }

    /// The DNS names the worker's certificate is for.
    pub fn tls_names(&self) -> Vec<String> {
        worker_names(&self.worker_name(), &self.namespace)
    }

    /// The Secret that holds the worker's certificate: the one only the operator reads.
    pub fn certificate_secret_name(&self) -> String {
        self.admin_secret_name()
    }

    /// The worker's Secret: a pool's holds both tokens (producers never read it); a dedicated
    /// worker's holds only what producers need, the ingest token, and its admin token is in
    /// [`Owner::admin_secret`].
    pub fn secret(&self, tokens: &WorkerTokens) -> Secret {
        let bundle = tokens.tls.as_ref().map(|tls| tls.bundle.as_str());
        if self.pool.is_none() {
            return self.ingest_secret(&tokens.ingest, bundle);
        }
        let token = |value: &str| ByteString(value.as_bytes().to_vec());
        let data = BTreeMap::from([
            (ADMIN_TOKEN_KEY.into(), token(&tokens.admin)),
            (INGEST_TOKEN_KEY.into(), token(&tokens.ingest)),
        ]);
        with_certificate(self.metadata(), data, tokens.tls.as_ref())
    }

    /// A dedicated worker's admin token, in a Secret of its own ([`admin_secret_name`]) that
    /// producers are never given; `None` for a pool (its Secret holds it).
    pub fn admin_secret(&self, tokens: &WorkerTokens) -> Option<Secret> {
        self.pool.is_none().then(|| {
            let metadata = ObjectMeta {
                name: Some(admin_secret_name(&self.worker_name())),
                ..self.metadata()
            };
            let data = BTreeMap::from([(
                ADMIN_TOKEN_KEY.into(),
                ByteString(tokens.admin.as_bytes().to_vec()),
            )]);
            with_certificate(metadata, data, tokens.tls.as_ref())
        })
    }

    /// The Secret the admin token is read from: a dedicated worker's admin Secret, or the
    /// pool's Secret.
    pub fn admin_secret_name(&self) -> String {
        match self.pool {
            Some(_) => self.worker_name(),
            None => admin_secret_name(&self.worker_name()),
        }
    }

    /// A pooled resource's own Secret, and a dedicated worker's producers' Secret: only its
    /// ingest token and the CA bundle that verifies the worker (`ca.crt`, with `--worker-tls`),
    /// under the same name and keys either way, so producers read it the same way.
    pub fn ingest_secret(&self, ingest: &str, bundle: Option<&str>) -> Secret {
        let mut data = BTreeMap::from([(
            INGEST_TOKEN_KEY.into(),
            ByteString(ingest.as_bytes().to_vec()),
        )]);
        if let Some(bundle) = bundle {
            data.insert(BUNDLE_KEY.into(), ByteString(bundle.as_bytes().to_vec()));
        }
        Secret {
            metadata: self.metadata(),
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    pub fn service(&self) -> Service {
        Service {
            metadata: self.metadata(),
            spec: Some(ServiceSpec {
                // A pool's workers are reached one by one, at `<pod>.<service>.<namespace>.svc`.
                cluster_ip: self.pool.map(|_| "None".into()),
                // A resource placed on a worker is reachable through its name as soon as the
                // pod has an address; its own readiness shows in the resource's status.
                publish_not_ready_addresses: self.pool.map(|_| true),
                selector: Some(self.selector()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: i32::from(WORKER_PORT),
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// The worker's StatefulSet for a worker whose admin token is `admin`: its pod template
    /// carries the token's (shortened) SHA-256, so a new admin token (its Secret deleted:
    /// rotation) restarts the worker, which reads the token when it starts. Never the token.
    pub fn stateful_set_for(
        &self,
        defaults: &WorkerDefaults,
        tokens: &WorkerTokens,
    ) -> StatefulSet {
        let mut set = self.stateful_set(defaults);
        // Certificates and the CA bundle are not in the template: workers reload their own
        // certificate and a connection's worker the bundle from their files (a renewal restarts
        // nothing).
        let annotations = BTreeMap::from([(
            ADMIN_TOKEN_ANNOTATION.into(),
            crate::stable_hash_hex(&tokens.admin, 8),
        )]);
        if let Some(meta) = set
            .spec
            .as_mut()
            .and_then(|spec| spec.template.metadata.as_mut())
        {
            meta.annotations = Some(annotations);
        }
        set
    }

    /// The worker's NetworkPolicy, when the operator makes them.
    pub fn network_policy(&self, defaults: &WorkerDefaults) -> Option<NetworkPolicy> {
        let settings = defaults.network_policies.as_ref()?;
        Some(NetworkPolicy {
            metadata: self.metadata(),
            spec: Some(worker_policy(
                settings,
                self.selector(),
                self.producers,
                WORKER_PORT,
            )),
        })
    }

    /// The `ferry worker` container: its data directory on the claim, its tokens from the
    /// Secret, its probes on the worker's own routes.
    fn container(&self, defaults: &WorkerDefaults) -> Container {
        let env = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            ..EnvVar::default()
        };
        let probe = |path: &str, period: i32, failure_threshold: Option<i32>| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("http".into()),
                scheme: defaults.tls.then(|| "HTTPS".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold,
            ..Probe::default()
        };
        let mount = |name: &str, path: &str, read_only: Option<bool>| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only,
            ..VolumeMount::default()
        };
        let mut args = vec![
            "worker".to_owned(),
            "--data-dir".into(),
            DATA_DIR.into(),
            "--listen".into(),
            format!("0.0.0.0:{WORKER_PORT}"),
            "--admin-token-file".into(),
            format!("{TOKENS_DIR}/{ADMIN_TOKEN_KEY}"),
            "--ingest-token-file".into(),
            format!("{TOKENS_DIR}/{INGEST_TOKEN_KEY}"),
            "--memory-budget".into(),
            memory_budget(self.resources(defaults)).to_string(),
            "--shutdown-timeout".into(),
            format!("{WORKER_SHUTDOWN_SECS}s"),
        ];
        if self.pool.is_some() {
            // Its transports take their own ingest tokens only.
            args.push("--own-ingest-tokens".into());
        }
        if let Some(jetstream) = self.jetstream() {
            args.extend([
                "--jetstream-url".into(),
                jetstream.url.clone(),
                "--jetstream-replicas".into(),
                jetstream.replicas.to_string(),
                "--jetstream-bucket".into(),
                crate::store::jetstream::names::pool_bucket(&self.namespace, &self.name),
                "--jetstream-owner".into(),
                "$(POD_NAME)".into(),
            ]);
            if jetstream.credentials_secret.is_some() {
                args.extend([
                    "--jetstream-credentials-dir".into(),
                    NATS_CREDENTIALS_DIR.into(),
                ]);
            }
            let tls = jetstream.tls.as_ref();
            if tls.is_some_and(|t| t.ca_secret.is_some()) {
                args.extend([
                    "--jetstream-ca-file".into(),
                    format!("{NATS_CA_DIR}/ca.crt"),
                ]);
            }
            if tls.is_some_and(|t| t.client_secret.is_some()) {
                args.extend([
                    "--jetstream-cert-file".into(),
                    format!("{NATS_CLIENT_DIR}/tls.crt"),
                    "--jetstream-key-file".into(),
                    format!("{NATS_CLIENT_DIR}/tls.key"),
                ]);
            }
        }
        // The operator's own list: the worker checks again at every connect.
        args.extend([
            "--forbidden-destinations".into(),
            defaults.forbidden_destinations.to_flag(),
        ]);
        if defaults.tls {
            args.extend([
                "--tls-cert-file".into(),
                format!("{TOKENS_DIR}/{CERT_KEY}"),
                "--tls-key-file".into(),
                format!("{TOKENS_DIR}/{PRIVATE_KEY_KEY}"),
            ]);
            if self.kind == "Connection" {
                // Its targets are transports' workers: it verifies them with the bundle.
                args.extend(["--ca-file".into(), format!("{TOKENS_DIR}/{BUNDLE_KEY}")]);
            }
        }
        Container {
            name: "worker".into(),
            image: Some(defaults.image.clone()),
            image_pull_policy: defaults.image_pull_policy.clone(),
            args: Some(args),
            env: Some(
                // A pool worker's own name, first: `$(POD_NAME)` in its URL is expanded from
                // the variables before it. (A dedicated worker's pod spec stays as it was, so
                // no worker restarts when the operator is upgraded.)
                self.pool
                    .map(|_| EnvVar {
                        name: "POD_NAME".into(),
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.name".into(),
                                ..ObjectFieldSelector::default()
                            }),
                            ..EnvVarSource::default()
                        }),
                        ..EnvVar::default()
                    })
                    .into_iter()
                    .chain([
                        env("FERRY_PUBLIC_URL", self.public_url(defaults.scheme())),
                        env("RUST_LOG", "ferry=info".into()),
                        env("FERRY_LOG_FORMAT", defaults.log_format.as_str().into()),
                    ])
                    .collect(),
            ),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(WORKER_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(probe("/readyz", 5, None)),
            liveness_probe: Some(probe("/healthz", 10, Some(6))),
            resources: Some(self.resources(defaults).clone()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(
                [
                    mount("data", DATA_DIR, None),
                    mount("tokens", TOKENS_DIR, Some(true)),
                    mount("tmp", "/tmp", None),
                ]
                .into_iter()
                .chain(
                    self.nats_secrets()
                        .into_iter()
                        .map(|(volume, _, dir)| mount(volume, dir, Some(true))),
                )
                .collect(),
            ),
            ..Container::default()
        }
    }

    /// The worker's token files: a pool's Secret as it is; a dedicated worker's admin token
    /// from its admin Secret and its ingest token from the producers' Secret, side by side.
    fn tokens_volume(&self, tls: bool) -> Volume {
        const MODE: i32 = 0o440;
        if self.pool.is_some() {
            return Volume {
                name: "tokens".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(self.worker_name()),
                    default_mode: Some(MODE),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            };
        }
        let key_of = |secret: String, key: &str| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret,
                items: Some(vec![KeyToPath {
                    key: key.into(),
                    path: key.into(),
                    mode: None,
                }]),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        };
        let mut sources = vec![
            key_of(self.admin_secret_name(), ADMIN_TOKEN_KEY),
            key_of(self.worker_name(), INGEST_TOKEN_KEY),
        ];
        if tls {
            sources.extend([
                key_of(self.admin_secret_name(), CERT_KEY),
                key_of(self.admin_secret_name(), PRIVATE_KEY_KEY),
            ]);
            if self.kind == "Connection" {
                sources.push(key_of(self.worker_name(), BUNDLE_KEY));
            }
        }
        Volume {
            name: "tokens".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(MODE),
                sources: Some(sources),
            }),
            ..Volume::default()
        }
    }

    /// A pool's JetStream, when its queues are there.
    fn jetstream(&self) -> Option<&crate::api::worker_pool::JetStreamQueue> {
        self.pool.and_then(|pool| pool.jetstream())
    }

    /// The Secrets a pool on JetStream mounts: (volume, Secret, directory).
    fn nats_secrets(&self) -> Vec<(&'static str, String, &'static str)> {
        let Some(jetstream) = self.jetstream() else {
            return Vec::new();
        };
        let tls = jetstream.tls.as_ref();
        [
            (
                "nats-credentials",
                jetstream.credentials_secret.clone(),
                NATS_CREDENTIALS_DIR,
            ),
            (
                "nats-ca",
                tls.and_then(|t| t.ca_secret.clone()),
                NATS_CA_DIR,
            ),
            (
                "nats-client",
                tls.and_then(|t| t.client_secret.clone()),
                NATS_CLIENT_DIR,
            ),
        ]
        .into_iter()
        .filter_map(|(volume, secret, dir)| secret.map(|secret| (volume, secret, dir)))
        .collect()
    }

    /// The claim template of the worker's data directory.
    fn data_claim(&self, defaults: &WorkerDefaults) -> PersistentVolumeClaim {
        let size = self.storage.size_or(self.default_storage_bytes);
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(self.labels()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity(size.to_string()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                // The resource's class, else the operator's default, else the cluster's.
                storage_class_name: self
                    .storage
                    .storage_class_name
                    .clone()
                    .or_else(|| defaults.storage_class.clone()),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }
    }

    pub fn stateful_set(&self, defaults: &WorkerDefaults) -> StatefulSet {
        // reclaimPolicy: Retain keeps the PVC (and the queue in it) when the resource goes.
        let when_deleted = match self.storage.reclaim_policy {
            ReclaimPolicy::Retain => "Retain",
            ReclaimPolicy::Delete => "Delete",
        };
        let pod = PodSpec {
            // The worker never talks to the API server.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: self
                .pool
                .map(|pool| pool.node_selector.clone())
                .filter(|selector| !selector.is_empty()),
            tolerations: self
                .pool
                .map(|pool| pool.tolerations.clone())
                .filter(|tolerations| !tolerations.is_empty()),
            affinity: self.pool.and_then(|pool| pool.affinity.clone()),
            // Give the worker time to save its records on SIGTERM.
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECS as i64),
            containers: vec![self.container(defaults)],
            volumes: Some(self.volumes(defaults)),
            ..PodSpec::default()
        };
        // On JetStream a pool's workers are stateless: no volume of their own (their data
        // directory, an emptyDir, holds only the ingest token hashes the operator gives again).
        let stateless = self.jetstream().is_some();
        StatefulSet {
            metadata: self.metadata(),
            spec: Some(StatefulSetSpec {
                replicas: Some(self.replicas),
                service_name: Some(self.worker_name()),
                selector: LabelSelector {
                    match_labels: Some(self.selector()),
                    ..LabelSelector::default()
                },
                persistent_volume_claim_retention_policy: (!stateless).then(|| {
                    StatefulSetPersistentVolumeClaimRetentionPolicy {
                        when_deleted: Some(when_deleted.into()),
                        when_scaled: Some("Retain".into()),
                    }
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                volume_claim_templates: (!stateless).then(|| vec![self.data_claim(defaults)]),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }

    /// The pod's volumes: its tokens, /tmp, a pool on JetStream's data directory and NATS
    /// Secrets.
    fn volumes(&self, defaults: &WorkerDefaults) -> Vec<Volume> {
        let empty = |name: &str, size: &str| Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(size.into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        };
        let mut volumes = vec![self.tokens_volume(defaults.tls), empty("tmp", "16Mi")];
        if self.jetstream().is_some() {
            volumes.push(empty("data", "64Mi"));
        }
        volumes.extend(
            self.nats_secrets()
                .into_iter()
                .map(|(volume, secret, _)| Volume {
                    name: volume.into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret),
                        default_mode: Some(0o440),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                }),
        );
        volumes
    }
}

/// A Secret only the operator reads (a dedicated worker's admin Secret, a pool's Secret) with
/// `data` and, with TLS, the worker's certificate and key and what it is in an annotation
/// (when it expires, who issued it, for which names: when to reissue it).
fn with_certificate(
    mut metadata: ObjectMeta,
    mut data: BTreeMap<String, ByteString>,
    tls: Option<&WorkerTls>,
) -> Secret {
    if let Some(tls) = tls {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        data.insert(CERT_KEY.into(), bytes(&tls.issued.cert));
        data.insert(PRIVATE_KEY_KEY.into(), bytes(&tls.issued.key));
        data.insert(BUNDLE_KEY.into(), bytes(&tls.bundle));
        metadata.annotations = Some(BTreeMap::from([(
            CERT_ANNOTATION.into(),
            serde_json::to_string(&tls.issued.info).unwrap_or_default(),
        )]));
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConnectionSpec, TransportSpec};
    use serde_json::{Value, json};

    fn transport(spec: Value) -> Transport {
        let mut t = Transport::new(
            "erp",
            serde_json::from_value::<TransportSpec>(spec).unwrap(),
        );
        t.metadata.namespace = Some("plant-a".into());
        t.metadata.uid = Some("uid-1".into());
        t
    }

    #[test]
    fn a_transport_worker_snapshot() {
        let t = transport(json!({"host": {"url": "http://erp:8080/ingest"}}));
        let owner = Owner::transport(&t).unwrap();
        let sts = serde_json::to_value(owner.stateful_set(&WorkerDefaults::default())).unwrap();
        let labels = json!({
            "app.kubernetes.io/component": "worker",
            "app.kubernetes.io/instance": "ferry-tp-erp",
            "app.kubernetes.io/managed-by": "ferry-operator",
            "app.kubernetes.io/name": "ferry",
            "ferry.dev/kind": "transport",
            "ferry.dev/name": "erp",
        });
        let expected = json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": "ferry-tp-erp",
                "namespace": "plant-a",
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport", "name": "erp", "uid": "uid-1",
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "replicas": 1,
                "serviceName": "ferry-tp-erp",
                "selector": {"matchLabels": {"app.kubernetes.io/instance": "ferry-tp-erp", "app.kubernetes.io/name": "ferry"}},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": "worker",
                            "image": format!("ghcr.io/ferry-dev/ferry:{}", env!("CARGO_PKG_VERSION")),
                            "args": ["worker", "--data-dir", "/var/lib/ferry", "--listen", "0.0.0.0:8080",
                                     "--admin-token-file", "/etc/ferry/tokens/admin-token",
                                     "--ingest-token-file", "/etc/ferry/tokens/ingest-token",
                                     "--memory-budget", "67108864", "--shutdown-timeout", "10s",
                                     "--forbidden-destinations", ""],
                            "env": [
                                {"name": "FERRY_PUBLIC_URL", "value": "http://ferry-tp-erp.plant-a.svc:8080"},
                                {"name": "RUST_LOG", "value": "ferry=info"},
                                {"name": "FERRY_LOG_FORMAT", "value": "text"},
                            ],
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/ferry"},
                                {"name": "tokens", "mountPath": "/etc/ferry/tokens", "readOnly": true},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [
                            // The admin token from the operator's Secret, the ingest token
                            // from the producers'.
                            {"name": "tokens", "projected": {"defaultMode": 288, "sources": [
                                {"secret": {"name": "ferry-tp-erp-admin", "optional": false,
                                            "items": [{"key": "admin-token", "path": "admin-token"}]}},
                                {"secret": {"name": "ferry-tp-erp", "optional": false,
                                            "items": [{"key": "ingest-token", "path": "ingest-token"}]}},
                            ]}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                        ],
                    },
                },
                "volumeClaimTemplates": [{
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data", "labels": labels},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2147483648"}}},
                }],
            },
        });
        assert_eq!(
            sts,
            expected,
            "{}",
            serde_json::to_string_pretty(&sts).unwrap()
        );
    }

    #[test]
    fn storage_reclaim_policy_and_defaults() {
        let t = transport(json!({
            "host": {"url": "http://erp/ingest"},
            "storage": {"size": "5Gi", "storageClassName": "fast", "reclaimPolicy": "Delete"},
        }));
        let defaults = WorkerDefaults {
            image_pull_policy: Some("IfNotPresent".into()),
            storage_class: Some("standard".into()),
            ..Default::default()
        };
        let sts =
            serde_json::to_value(Owner::transport(&t).unwrap().stateful_set(&defaults)).unwrap();
        let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
        assert_eq!(claim["resources"]["requests"]["storage"], "5368709120");
        assert_eq!(
            claim["storageClassName"], "fast",
            "the resource's class wins over the default"
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Delete"
        );
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );

        let plain = transport(json!({"host": {"url": "http://erp/ingest"}}));
        let sts = serde_json::to_value(Owner::transport(&plain).unwrap().stateful_set(&defaults))
            .unwrap();
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "standard"
        );
    }

    fn tls_tokens() -> WorkerTokens {
        use crate::operator::objects::certificates::{CertInfo, Issued};
        WorkerTokens {
            admin: "admin".into(),
            ingest: "ingest".into(),
            tls: Some(WorkerTls {
                issued: Issued {
                    cert: "CERT".into(),
                    key: "KEY".into(),
                    info: CertInfo {
                        not_after: 1,
                        issuer: "ferry CA 0".into(),
                        names: "n".into(),
                    },
                },
                bundle: "BUNDLE".into(),
            }),
        }
    }

    #[test]
    fn with_tls_a_worker_serves_https_only_from_its_admin_secret() {
        let defaults = WorkerDefaults {
            tls: true,
            ..WorkerDefaults::default()
        };
        let t = transport(json!({"host": {"url": "http://erp/ingest"}}));
        let owner = Owner::transport(&t).unwrap();
        let tokens = tls_tokens();
        let sts = serde_json::to_value(owner.stateful_set_for(&defaults, &tokens)).unwrap();
        let pod = &sts["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--tls-cert-file", "/etc/ferry/tokens/tls.crt"])
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--tls-key-file", "/etc/ferry/tokens/tls.key"])
        );
        assert!(
            !args.contains(&"--ca-file"),
            "a transport's worker sends to hosts only"
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
        assert_eq!(container["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
        assert_eq!(
            container["env"][0]["value"],
            "https://ferry-tp-erp.plant-a.svc:8080"
        );
        let sources = &pod["volumes"][0]["projected"]["sources"];
        let from_admin: Vec<&str> = sources
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["secret"]["name"] == "ferry-tp-erp-admin")
            .map(|s| s["secret"]["items"][0]["key"].as_str().unwrap())
            .collect();
        assert_eq!(from_admin, ["admin-token", "tls.crt", "tls.key"]);

        // The key only where producers cannot read it; the bundle where they do.
        let admin = owner.admin_secret(&tokens).unwrap();
        let data = admin.data.unwrap();
        assert!(data.contains_key("tls.key") && data.contains_key("tls.crt"));
        assert!(
            admin.metadata.annotations.unwrap()[CERT_ANNOTATION].contains("ferry CA 0"),
            "the annotation says who issued it"
        );
        let producers = owner.secret(&tokens).data.unwrap();
        assert_eq!(
            producers.keys().collect::<Vec<_>>(),
            ["ca.crt", "ingest-token"]
        );
        assert_eq!(producers["ca.crt"].0, b"BUNDLE");
    }

    #[test]
    fn with_tls_a_connection_worker_verifies_its_targets_with_the_bundle() {
        let defaults = WorkerDefaults {
            tls: true,
            ..WorkerDefaults::default()
        };
        let spec: ConnectionSpec = serde_json::from_value(json!({"started": true})).unwrap();
        let mut c = Connection::new("crm", spec);
        c.metadata.namespace = Some("plant-a".into());
        c.metadata.uid = Some("uid-3".into());
        let owner = Owner::connection(&c).unwrap();
        let sts = serde_json::to_value(owner.stateful_set_for(&defaults, &tls_tokens())).unwrap();
        let args = sts["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(
            args.contains(r#""--ca-file","/etc/ferry/tokens/ca.crt""#),
            "{args}"
        );
        // A new bundle restarts nothing: the worker reloads it from its file.
        let annotations = &sts["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations.as_object().map(|a| a.len()),
            Some(1),
            "only the admin token's hash: {annotations}"
        );
    }

    #[test]
    fn a_stopped_connection_is_scaled_to_zero() {
        let spec: ConnectionSpec = serde_json::from_value(json!({"started": false})).unwrap();
        let mut c = Connection::new("crm-orders", spec);
        c.metadata.namespace = Some("plant-a".into());
        c.metadata.uid = Some("uid-2".into());
        let owner = Owner::connection(&c).unwrap();
        assert_eq!(owner.worker_name(), "ferry-conn-crm-orders");
        let sts = serde_json::to_value(owner.stateful_set(&WorkerDefaults::default())).unwrap();
        assert_eq!(sts["spec"]["replicas"], 0);
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "104857600"
        );
        c.spec.started = true;
        let sts = Owner::connection(&c)
            .unwrap()
            .stateful_set(&WorkerDefaults::default());
        assert_eq!(sts.spec.and_then(|s| s.replicas), Some(1));
    }

    #[test]
    fn service_and_secret() {
        let t = transport(json!({"host": {"url": "http://erp/ingest"}}));
        let owner = Owner::transport(&t).unwrap();
        let service = serde_json::to_value(owner.service()).unwrap();
        assert_eq!(
            service["spec"]["ports"],
            json!([{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}])
        );
        assert_eq!(
            service["spec"]["selector"]["app.kubernetes.io/instance"],
            "ferry-tp-erp"
        );
        assert_eq!(
            service["metadata"]["ownerReferences"][0]["kind"],
            "Transport"
        );
        let tokens = WorkerTokens {
            admin: "a".into(),
            ingest: "i".into(),
            tls: None,
        };
        // Producers read ferry-tp-erp: the ingest token only.
        let secret = owner.secret(&tokens);
        assert_eq!(secret.metadata.name.as_deref(), Some("ferry-tp-erp"));
        let data = secret.data.unwrap();
        assert_eq!(data.len(), 1, "{data:?}");
        assert_eq!(data["ingest-token"].0, b"i");
        // The admin token, in a Secret of its own, controlled by the transport too.
        let admin = owner.admin_secret(&tokens).expect("a dedicated worker's");
        assert_eq!(admin.metadata.name.as_deref(), Some("ferry-tp-erp-admin"));
        assert_eq!(owner.admin_secret_name(), "ferry-tp-erp-admin");
        assert_eq!(
            admin.metadata.owner_references,
            secret.metadata.owner_references
        );
        let data = admin.data.unwrap();
        assert_eq!(data.len(), 1, "{data:?}");
        assert_eq!(data["admin-token"].0, b"a");
    }

    /// Pinned forever: a change here renames running workers and orphans their volumes. The
    /// hashes were computed apart from ferry (Python's hashlib.sha256).
    #[test]
    fn worker_names_are_golden() {
        for (short, name, expected) in [
            ("tp", "erp", "ferry-tp-erp"),
            ("conn", "crm", "ferry-conn-crm"),
            // 52 characters exactly: kept.
            (
                "tp",
                &"a".repeat(43),
                &format!("ferry-tp-{}", "a".repeat(43)),
            ),
            (
                "tp",
                "a-rather-long-transport-name-for-plant-a-erp-orders-x",
                "ferry-tp-a-rather-long-transport-name-for-p-33f2352d",
            ),
            ("tp", "orders.plant-a", "ferry-tp-orders-plant-a-0cdf81e9"),
            ("tp", "orders-plant-a", "ferry-tp-orders-plant-a"),
            (
                "conn",
                "x.".repeat(126).trim_end_matches('.'),
                "ferry-conn-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-1495e086",
            ),
        ] {
            assert_eq!(worker_name(short, name), expected, "{name}");
        }
    }

    proptest::proptest! {
        /// Every name the API server accepts for a resource (a DNS subdomain) gives a worker
        /// name that is a DNS label of at most 52 characters; different names, different
        /// worker names.
        #[test]
        fn every_accepted_name_gives_a_runnable_worker_name(
            a in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?){0,3}",
            b in "[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?",
        ) {
            for name in [&a, &b] {
                let worker = worker_name("conn", name);
                proptest::prop_assert!(worker.len() <= MAX_WORKER_NAME, "{worker}");
                proptest::prop_assert!(
                    worker.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                        && worker.starts_with("ferry-")
                        && !worker.ends_with('-'),
                    "{worker}"
                );
            }
            if a != b {
                proptest::prop_assert_ne!(worker_name("tp", &a), worker_name("tp", &b));
            }
        }
    }

    /// A label value as the API server accepts it: at most 63 characters, alphanumerics with
    /// `-`, `_` and `.` inside.
    fn is_label_value(value: &str) -> bool {
        let inner = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
        value.is_empty()
            || (value.len() <= MAX_LABEL_VALUE
                && value.as_bytes()[0].is_ascii_alphanumeric()
                && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric()
                && value.bytes().all(inner))
    }

    proptest::proptest! {
        /// Every name the API server accepts (up to 253 characters, dots) gives objects whose
        /// every label is a valid label value, with `ferry.dev/name` exactly where the name
        /// is one. (A name over 63 characters once made the build fail at run time.)
        #[test]
        fn every_accepted_name_gives_objects_with_valid_labels(
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
        ) {
            let mut t = transport(json!({"host": {"url": "http://erp/ingest"}}));
            t.metadata.name = Some(name.clone());
            let owner = Owner::transport(&t).unwrap();
            let tokens = WorkerTokens { admin: "a".into(), ingest: "i".into(), tls: None };
            let set = owner.stateful_set(&WorkerDefaults::default());
            let template = set.spec.as_ref().unwrap().template.metadata.clone().unwrap();
            let claim = set.spec.as_ref().unwrap().volume_claim_templates.clone().unwrap();
            for labels in [
                set.metadata.labels.clone(),
                template.labels,
                claim[0].metadata.labels.clone(),
                owner.service().metadata.labels,
                owner.secret(&tokens).metadata.labels,
            ] {
                let labels = labels.unwrap();
                for value in labels.values() {
                    proptest::prop_assert!(is_label_value(value), "{value:?} of {name}");
                }
                proptest::prop_assert_eq!(
                    labels.contains_key("ferry.dev/name"),
                    name.len() <= MAX_LABEL_VALUE,
                    "{}", name
                );
            }
        }
    }

    #[test]
    fn objects_need_an_owner_uid() {
        let mut t = transport(json!({"host": {"url": "http://erp/ingest"}}));
        t.metadata.uid = None;
        assert!(matches!(
            Owner::transport(&t),
            Err(BuildError::NoUid { .. })
        ));
    }

    #[test]
    fn the_worker_budget_follows_the_pod_memory_limit() {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let limit = |q: &str| ResourceRequirements {
            limits: Some([("memory".to_string(), Quantity(q.into()))].into()),
            ..Default::default()
        };
        assert_eq!(memory_budget(&limit("512Mi")), 128 << 20);
        assert_eq!(memory_budget(&limit("1G")), 250_000_000);
        // Not whole bytes, or no limit at all: the worker's own default.
        let default = crate::worker::budget::DEFAULT_BYTES;
        assert_eq!(memory_budget(&limit("0.5Gi")), default);
        assert_eq!(memory_budget(&ResourceRequirements::default()), default);
    }
}
