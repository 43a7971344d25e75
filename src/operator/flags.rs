//! `ferry operator`'s command line: every flag beside what it configures, turned into the
//! operator's options (`run::OperatorOptions`, the workers' defaults, the certificate policy).

use std::net::SocketAddr;

/// `ferry operator`'s flags.
#[derive(clap::Args)]
pub struct Flags {
    /// How many connections may be in their startup at once.
    #[arg(long, env = "FERRY_STARTUP_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    startup_concurrency: u16,
    /// A connection in its startup longer than this lets the next one start.
    #[arg(long, env = "FERRY_STARTUP_TIMEOUT", default_value = "5m")]
    startup_timeout: crate::api::duration::Duration,
    /// Who shares the startup places: every connection of the cluster, or each namespace on
    /// its own (one team's connections that never come up then delay no other team's).
    #[arg(
        long,
        env = "FERRY_STARTUP_QUEUE_SCOPE",
        value_enum,
        default_value = "cluster"
    )]
    startup_queue_scope: crate::connection::startup_queue::Scope,
    /// How often each worker's report is read into status.
    #[arg(long, env = "FERRY_STATUS_INTERVAL", default_value = "5s")]
    status_interval: crate::api::duration::Duration,
    /// How many workers may restart at once when the worker template changes because of the
    /// operator (a new image or version, a changed flag): a number, or a percentage of the
    /// worker pods it runs (rounded down, at least 1). A resource's own change is never held.
    #[arg(long, env = "FERRY_MAX_UNAVAILABLE_WORKERS", default_value = "10%", value_parser = crate::operator::runtime::rollouts::MaxUnavailable::parse)]
    max_unavailable_workers: crate::operator::runtime::rollouts::MaxUnavailable,
    /// A worker not new and Ready this long after its restart began stops the rollout (a
    /// Warning Event; the alert FerryWorkerRolloutStuck) until it is.
    #[arg(long, env = "FERRY_ROLLOUT_TIMEOUT", default_value = "10m")]
    rollout_timeout: crate::api::duration::Duration,
    /// How many requests to the API server may be in flight at once (watches aside): a
    /// thousand resources reconciled together wait for a place instead of each opening a
    /// connection.
    #[arg(long, env = "FERRY_API_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    api_concurrency: u16,
    /// How workers are reached: at the pod IP (default in a pod) or through the API server's
    /// pod proxy (default outside the cluster).
    #[arg(long, env = "FERRY_WORKER_ACCESS", value_enum)]
    worker_access: Option<crate::operator::runtime::worker_client::WorkerAccess>,
    /// How long one call to a worker may take.
    #[arg(long, env = "FERRY_WORKER_TIMEOUT", default_value = "10s")]
    worker_timeout: crate::api::duration::Duration,
    /// The image workers run (this same binary).
    #[arg(long, env = "FERRY_WORKER_IMAGE")]
    worker_image: Option<String>,
    #[arg(long, env = "FERRY_WORKER_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    worker_image_pull_policy: Option<String>,
    /// The storage class of worker volumes whose resource names none (default: the cluster's).
    #[arg(long, env = "FERRY_WORKER_STORAGE_CLASS")]
    worker_storage_class: Option<String>,
    #[arg(long, env = "FERRY_WORKER_CPU_REQUEST", default_value = "50m")]
    worker_cpu_request: String,
    #[arg(long, env = "FERRY_WORKER_MEMORY_REQUEST", default_value = "64Mi")]
    worker_memory_request: String,
    /// No CPU limit by default (throttling a worker delays deliveries).
    #[arg(long, env = "FERRY_WORKER_CPU_LIMIT")]
    worker_cpu_limit: Option<String>,
    #[arg(long, env = "FERRY_WORKER_MEMORY_LIMIT", default_value = "256Mi")]
    worker_memory_limit: String,
    /// Watch only these namespaces (comma-separated or repeated; default: all). The operator
    /// then needs a Role in each and no cluster-wide access.
    #[arg(
        long = "namespace",
        env = "FERRY_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Where /healthz, /readyz and /metrics listen.
    #[arg(long, env = "FERRY_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Take part in leader election, so that of several replicas only one writes.
    #[arg(long, env = "FERRY_LEADER_ELECTION")]
    leader_election: bool,
    /// The namespace of the leader Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    lease_name: String,
    /// This replica's name in Events and the Lease (default: the pod name, or host and pid).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Address ranges (CIDRs, comma-separated) no host, source or target URL may reach: a
    /// spec whose URL is, or resolves to, one is refused, and workers check again when they
    /// connect. Default: link-local (the cloud metadata address) and, in a cluster, loopback;
    /// "" allows every address.
    #[arg(long, env = "FERRY_FORBIDDEN_DESTINATIONS", value_parser = crate::destinations::Forbidden::parse)]
    forbidden_destinations: Option<crate::destinations::Forbidden>,
    /// Make a NetworkPolicy for every worker (who may reach its port, where it may connect;
    /// docs/security.md). `false` for clusters whose policies are managed otherwise.
    #[arg(long, env = "FERRY_WORKER_NETWORK_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    worker_network_policies: bool,
    /// The labels of the operator's pods (in the lease namespace), allowed to every worker.
    #[arg(
        long,
        env = "FERRY_OPERATOR_POD_LABELS",
        default_value = "app.kubernetes.io/name=ferry,app.kubernetes.io/component=operator",
        value_parser = labels
    )]
    operator_pod_labels: std::collections::BTreeMap<String, String>,
    /// More peers allowed to every worker's port, as a JSON list of NetworkPolicyPeers: the
    /// scrapers of the workers' /metrics; the API server's address with --worker-access proxy.
    #[arg(long, env = "FERRY_WORKER_INGRESS_FROM", default_value = "[]", value_parser = peers)]
    worker_ingress_from: Peers,
    /// Workers serve TLS only, with certificates from a CA the operator makes and keeps in the
    /// Secret ferry-ca of its namespace; producers find its bundle as ca.crt in their Secret
    /// and in the ConfigMap ferry-ca of their namespace. `false`: plain HTTP.
    #[arg(long, env = "FERRY_WORKER_TLS", default_value_t = true, action = clap::ArgAction::Set)]
    worker_tls: bool,
    /// How long the workers' CA is valid.
    #[arg(long, env = "FERRY_CA_VALIDITY", default_value = "26280h")]
    ca_validity: crate::api::duration::Duration,
    /// A new CA is made this long before the current one expires (both are trusted from then
    /// on); it signs from halfway through.
    #[arg(long, env = "FERRY_CA_RENEW_BEFORE", default_value = "4320h")]
    ca_renew_before: crate::api::duration::Duration,
    /// How long a worker's certificate is valid.
    #[arg(long, env = "FERRY_CERT_VALIDITY", default_value = "2160h")]
    cert_validity: crate::api::duration::Duration,
    /// A worker's certificate is reissued this long before it expires.
    #[arg(long, env = "FERRY_CERT_RENEW_BEFORE", default_value = "720h")]
    cert_renew_before: crate::api::duration::Duration,
}

/// NetworkPolicyPeers given as JSON.
#[derive(Clone, Debug)]
struct Peers(Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>);

fn peers(json: &str) -> Result<Peers, String> {
    serde_json::from_str(json)
        .map(Peers)
        .map_err(|e| format!("not a JSON list of NetworkPolicyPeers: {e}"))
}

/// `key=value,key=value`.
fn labels(list: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}

impl Flags {
    /// The operator's options, or why these flags cannot work together.
    pub fn options(
        self,
        log_format: crate::logging::LogFormat,
    ) -> Result<crate::operator::run::OperatorOptions, String> {
        let certificates = crate::operator::objects::certificates::CertificatePolicy::new(
            self.ca_validity.as_std(),
            self.ca_renew_before.as_std(),
            self.cert_validity.as_std(),
            self.cert_renew_before.as_std(),
        )
        .map_err(|e| e.to_string())?;
        use crate::operator::{
            objects::builders::WorkerDefaults, runtime::leadership::LeaseOptions,
        };
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let instance = self.instance.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "ferry-operator".into());
            format!("{host}-{}", std::process::id())
        });
        let mut defaults = WorkerDefaults::default();
        if let Some(image) = self.worker_image {
            defaults.image = image;
        }
        defaults.image_pull_policy = self.worker_image_pull_policy;
        defaults.storage_class = self.worker_storage_class;
        // Workers log the way their operator does.
        defaults.log_format = log_format;
        defaults.tls = self.worker_tls;
        defaults.forbidden_destinations = self.forbidden_destinations.unwrap_or_else(|| {
            crate::destinations::Forbidden::operator_default(crate::operator::run::in_cluster())
        });
        defaults.network_policies = self.worker_network_policies.then(|| {
            let mut policies = crate::operator::objects::network_policy::WorkerNetworkPolicies::new(
                &self.lease_namespace,
                self.operator_pod_labels,
            );
            policies.ingress_from = self.worker_ingress_from.0;
            policies.forbidden = defaults.forbidden_destinations.clone();
            policies
        });
        let quantities = |pairs: Vec<(&str, Option<String>)>| {
            pairs
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v?))))
                .collect()
        };
        defaults.resources.requests = Some(quantities(vec![
            ("cpu", Some(self.worker_cpu_request)),
            ("memory", Some(self.worker_memory_request)),
        ]));
        defaults.resources.limits = Some(quantities(vec![
            ("cpu", self.worker_cpu_limit),
            ("memory", Some(self.worker_memory_limit)),
        ]));
        Ok(crate::operator::run::OperatorOptions {
            namespace: self.lease_namespace.clone(),
            certificates,
            startup_concurrency: self.startup_concurrency.into(),
            startup_timeout: self.startup_timeout.as_std(),
            startup_queue_scope: self.startup_queue_scope,
            status_interval: self.status_interval.as_std(),
            rollout: crate::operator::runtime::context::RolloutPolicy {
                max_unavailable: self.max_unavailable_workers,
                timeout: self.rollout_timeout.as_std(),
            },
            api_concurrency: self.api_concurrency.into(),
            worker_access: self.worker_access,
            worker_timeout: self.worker_timeout.as_std(),
            defaults,
            scope: crate::operator::runtime::watch_scope::WatchScope::of(&self.namespaces),
            listen: self.listen,
            leader_election: self.leader_election.then(|| LeaseOptions {
                namespace: self.lease_namespace,
                name: self.lease_name,
                identity: instance.clone(),
            }),
            instance,
        })
    }
}
