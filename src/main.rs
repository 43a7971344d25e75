//! `ferry`: the command line. Each subcommand's work lives in its own module.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use axum::http::StatusCode;
use clap::{Parser, Subcommand};
use ferry::{
    standalone,
    worker::{WorkerOptions, process, server, tokens::Tokens},
};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Connections and Transports for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as plain text (colour only on a terminal) or as one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "FERRY_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: ferry::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions generated from the Rust types (YAML).
    Crds,
    /// Host transports for the operator: the HTTP API, the Store and Forward queue on disk.
    Worker {
        /// Where the store (queues, desired state, totals) lives.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// File holding the token the admin routes require.
        #[arg(long)]
        admin_token_file: PathBuf,
        /// File holding the token ingest requires.
        #[arg(long)]
        ingest_token_file: PathBuf,
        /// A pool's worker: each transport takes only its own ingest token (given with its
        /// spec), never the one in --ingest-token-file.
        #[arg(long, env = "FERRY_OWN_INGEST_TOKENS")]
        own_ingest_tokens: bool,
        /// The URL producers use to reach this worker (reported as each transport's endpoint).
        #[arg(long, env = "FERRY_PUBLIC_URL")]
        public_url: Option<String>,
        #[command(flatten)]
        flags: WorkerFlags,
    },
    /// Run Transport manifests locally, without Kubernetes (the embedded default when no
    /// --manifests are given).
    Standalone {
        /// Manifest files or directories (multi-document YAML, as given to kubectl).
        #[arg(long, num_args = 1..)]
        manifests: Vec<PathBuf>,
        #[arg(long, default_value = "ferry-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Require this admin token (by default the API is open, on loopback).
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Require this ingest token.
        #[arg(long)]
        ingest_token_file: Option<PathBuf>,
        #[command(flatten)]
        flags: WorkerFlags,
        /// How many connections may be in their startup at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        startup_concurrency: u16,
    },
    /// The controller: watches Transports and Connections, runs a worker for each, writes
    /// their status.
    Operator(Box<OperatorArgs>),
    /// A sample source for connections: orders that change every few seconds.
    Source {
        #[arg(long, default_value = "127.0.0.1:9091")]
        listen: SocketAddr,
        /// How many orders it serves.
        #[arg(long, default_value_t = 10)]
        orders: usize,
        /// How often one of them changes.
        #[arg(long, default_value = "3s")]
        change_every: ferry::api::duration::Duration,
        /// Records per page (more are linked with rel="next").
        #[arg(long, default_value_t = 50)]
        page_size: usize,
        /// Answer no request for records until `POST /release` (a source that takes its time).
        #[arg(long)]
        hold: bool,
    },
    /// A sample host for transports: prints every transaction it receives.
    Sink {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// The status to answer with (200; try 503 or 400).
        #[arg(long, default_value_t = 200)]
        answer: u16,
        /// Do not print each transaction.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// How many connections may be in their startup at once.
    #[arg(long, env = "FERRY_STARTUP_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    startup_concurrency: u16,
    /// A connection in its startup longer than this lets the next one start.
    #[arg(long, env = "FERRY_STARTUP_TIMEOUT", default_value = "5m")]
    startup_timeout: ferry::api::duration::Duration,
    /// Who shares the startup places: every connection of the cluster, or each namespace on
    /// its own (one team's connections that never come up then delay no other team's).
    #[arg(
        long,
        env = "FERRY_STARTUP_QUEUE_SCOPE",
        value_enum,
        default_value = "cluster"
    )]
    startup_queue_scope: ferry::connection::startup_queue::Scope,
    /// How often each worker's report is read into status.
    #[arg(long, env = "FERRY_STATUS_INTERVAL", default_value = "5s")]
    status_interval: ferry::api::duration::Duration,
    /// How many requests to the API server may be in flight at once (watches aside): a
    /// thousand resources reconciled together wait for a place instead of each opening a
    /// connection.
    #[arg(long, env = "FERRY_API_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    api_concurrency: u16,
    /// How workers are reached: at the pod IP (default in a pod) or through the API server's
    /// pod proxy (default outside the cluster).
    #[arg(long, env = "FERRY_WORKER_ACCESS", value_enum)]
    worker_access: Option<ferry::operator::runtime::worker_client::WorkerAccess>,
    /// How long one call to a worker may take.
    #[arg(long, env = "FERRY_WORKER_TIMEOUT", default_value = "10s")]
    worker_timeout: ferry::api::duration::Duration,
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
    #[arg(long, env = "FERRY_FORBIDDEN_DESTINATIONS", value_parser = ferry::destinations::Forbidden::parse)]
    forbidden_destinations: Option<ferry::destinations::Forbidden>,
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
    ca_validity: ferry::api::duration::Duration,
    /// A new CA is made this long before the current one expires (both are trusted from then
    /// on); it signs from halfway through.
    #[arg(long, env = "FERRY_CA_RENEW_BEFORE", default_value = "4320h")]
    ca_renew_before: ferry::api::duration::Duration,
    /// How long a worker's certificate is valid.
    #[arg(long, env = "FERRY_CERT_VALIDITY", default_value = "2160h")]
    cert_validity: ferry::api::duration::Duration,
    /// A worker's certificate is reissued this long before it expires.
    #[arg(long, env = "FERRY_CERT_RENEW_BEFORE", default_value = "720h")]
    cert_renew_before: ferry::api::duration::Duration,
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

impl OperatorArgs {
    fn options(
        self,
        log_format: ferry::logging::LogFormat,
    ) -> Result<ferry::operator::run::OperatorOptions, String> {
        let certificates = ferry::operator::objects::certificates::CertificatePolicy::new(
            self.ca_validity.as_std(),
            self.ca_renew_before.as_std(),
            self.cert_validity.as_std(),
            self.cert_renew_before.as_std(),
        )
        .map_err(|e| e.to_string())?;
        use ferry::operator::{
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
            ferry::destinations::Forbidden::operator_default(ferry::operator::run::in_cluster())
        });
        defaults.network_policies = self.worker_network_policies.then(|| {
            let mut policies = ferry::operator::objects::network_policy::WorkerNetworkPolicies::new(
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
        Ok(ferry::operator::run::OperatorOptions {
            namespace: self.lease_namespace.clone(),
            certificates,
            startup_concurrency: self.startup_concurrency.into(),
            startup_timeout: self.startup_timeout.as_std(),
            startup_queue_scope: self.startup_queue_scope,
            status_interval: self.status_interval.as_std(),
            api_concurrency: self.api_concurrency.into(),
            worker_access: self.worker_access,
            worker_timeout: self.worker_timeout.as_std(),
            defaults,
            scope: ferry::operator::runtime::watch_scope::WatchScope::of(&self.namespaces),
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

/// What `ferry worker` and `ferry standalone` share: forwarding and the limits of the server.
#[derive(clap::Args)]
struct WorkerFlags {
    /// Serve TLS only, with this PEM certificate chain (a TLS Secret's tls.crt); read again
    /// when it changes.
    #[arg(long, env = "FERRY_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The certificate's PEM private key (tls.key).
    #[arg(long, env = "FERRY_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Also trust the CA certificates of this PEM file when sending to targets (the operator's
    /// CA bundle: a connection's target transports serve its certificates).
    #[arg(long, env = "FERRY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Deliveries in flight while a Store and Forward queue is forwarded. 1 (the default)
    /// sends each transaction after the host answered the previous one, so the host sees the
    /// queue's order exactly; more is faster but the host may see neighbours reordered.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    forward_window: u16,
    /// Bytes of transactions held in memory at once across all producers; over it a producer
    /// is answered 503 with Retry-After. The operator sets a quarter of the pod's memory limit.
    #[arg(long, env = "FERRY_MEMORY_BUDGET", default_value = "64Mi")]
    memory_budget: ferry::api::quantity::ByteQuantity,
    /// Connections served at once (more wait in the listen backlog).
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = server::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// How long a request may take to send its head; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, env = "FERRY_HEADER_READ_TIMEOUT", default_value = "30s")]
    header_read_timeout: ferry::api::duration::Duration,
    /// On SIGTERM, how long requests already in their handlers may take to answer before the
    /// connections are closed and the records saved (keep it well below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "FERRY_SHUTDOWN_TIMEOUT", default_value = "10s")]
    shutdown_timeout: ferry::api::duration::Duration,
    /// Address ranges (CIDRs, comma-separated) no host, source or target may be reached at:
    /// a URL with such an address is refused, and a name that resolves only to such addresses
    /// is not connected to (checked at every connect). The operator passes its own list to its
    /// workers; "" allows every address.
    #[arg(long, env = "FERRY_FORBIDDEN_DESTINATIONS", value_parser = ferry::destinations::Forbidden::parse, default_value = ferry::destinations::LINK_LOCAL)]
    forbidden_destinations: ferry::destinations::Forbidden,
}

impl WorkerFlags {
    fn options(&self, data_dir: PathBuf, public_url: String) -> WorkerOptions {
        WorkerOptions {
            data_dir,
            public_url,
            forward_window: self.forward_window.into(),
            memory_budget: self.memory_budget.bytes(),
        }
    }

    /// The certificate and key to serve TLS with, when given.
    fn tls(&self) -> Option<ferry::worker::tls::CertFiles> {
        let (cert, key) = self.tls_cert_file.clone().zip(self.tls_key_file.clone())?;
        Some(ferry::worker::tls::CertFiles { cert, key })
    }

    fn limits(&self) -> server::ServerLimits {
        server::ServerLimits {
            header_read_timeout: self.header_read_timeout.as_std(),
            max_connections: self.max_connections as usize,
            shutdown_timeout: self.shutdown_timeout.as_std(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Crds = cli.command {
        return match ferry::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("cannot render the CRDs: {e}")),
        };
    }
    ferry::logging::init(cli.log_format);
    ferry::store::install_panic_hook();
    ferry::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run(cli.command, cli.log_format))
}

fn fail(message: String) -> ExitCode {
    eprintln!("ferry: {message}");
    ExitCode::FAILURE
}

async fn run(command: Command, log_format: ferry::logging::LogFormat) -> ExitCode {
    if let Command::Worker { flags, .. } | Command::Standalone { flags, .. } = &command {
        ferry::destinations::forbid_for_process(flags.forbidden_destinations.clone());
        if let Some(file) = &flags.ca_file {
            let trusted = std::fs::read(file)
                .map_err(|e| format!("--ca-file {}: {e}", file.display()))
                .and_then(|pem| ferry::trust::trust_for_process(&pem, file));
            if let Err(e) = trusted {
                return fail(e);
            }
        }
    }
    match command {
        Command::Crds => ExitCode::SUCCESS,
        Command::Worker {
            data_dir,
            listen,
            admin_token_file,
            ingest_token_file,
            own_ingest_tokens,
            public_url,
            flags,
        } => {
            let tokens = match Tokens::read(Some(&admin_token_file), Some(&ingest_token_file)) {
                Ok(tokens) => Tokens {
                    own_ingest_only: own_ingest_tokens,
                    ..tokens
                },
                Err(e) => return fail(e.to_string()),
            };
            let tls = flags.tls();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let options = flags.options(
                data_dir,
                public_url.unwrap_or_else(|| format!("{scheme}://{listen}")),
            );
            exit(process::run_worker(options, listen, tokens, flags.limits(), tls).await)
        }
        Command::Standalone {
            manifests,
            data_dir,
            listen,
            admin_token_file,
            ingest_token_file,
            flags,
            startup_concurrency,
        } => {
            let tokens =
                match Tokens::read(admin_token_file.as_deref(), ingest_token_file.as_deref()) {
                    Ok(tokens) => tokens,
                    Err(e) => return fail(e.to_string()),
                };
            let tls = flags.tls();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let options = flags.options(data_dir, format!("{scheme}://{listen}"));
            let limits = flags.limits();
            let concurrency = startup_concurrency.into();
            let run = standalone::run(
                options,
                listen,
                tokens,
                limits,
                &manifests,
                concurrency,
                tls,
            );
            exit(run.await)
        }
        Command::Operator(args) => {
            let options = match args.options(log_format) {
                Ok(options) => options,
                Err(e) => return fail(e),
            };
            match ferry::operator::run::run(options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(ferry::error_chain(&e)),
            }
        }
        Command::Source {
            listen,
            orders,
            change_every,
            page_size,
            hold,
        } => match ferry::source::serve(listen, orders, change_every.as_std(), page_size, hold)
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("source on {listen}: {e}")),
        },
        Command::Sink {
            listen,
            answer,
            quiet,
        } => {
            let Ok(answer) = StatusCode::from_u16(answer) else {
                return fail(format!("--answer {answer} is not an HTTP status"));
            };
            match ferry::sink::serve(listen, answer, quiet).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("sink on {listen}: {e}")),
            }
        }
    }
}

/// The exit of a worker or standalone process.
fn exit(outcome: Result<(), process::Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ferry: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
