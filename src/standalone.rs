//! `ferry standalone`: load Connection/Transport manifests from files and run them in one
//! local worker, without Kubernetes. Files are read again when they change (edit
//! `suspended: true` and save to suspend); a file that no longer validates changes nothing.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use tokio::sync::watch;

use crate::{
    api::{
        Connection,
        manifest::parse_documents,
        validate::{ManifestValidator, Resource},
    },
    connection::{
        runtime::ConnectionRuntime,
        startup_queue::{Look, StartupQueue},
    },
    transport::runtime::TransportRuntime,
    wire::{self, Purge, Resolved, ResolvedTransport, Startup, key},
    worker::{
        Worker, WorkerOptions,
        process::{self, Failure},
        server::ServerLimits,
        tokens::Tokens,
    },
};

/// Used when no `--manifests` are given: a transport delivering to `ferry sink`'s default
/// address, and a connection syncing `ferry source`'s orders into it.
pub const EMBEDDED_DEFAULT: &str = include_str!("../examples/standalone.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {object} is defined twice (also in {first})")]
    Duplicate {
        path: String,
        object: String,
        first: String,
    },
}

/// One object from the manifests, with where it came from.
pub struct Loaded {
    pub source: String,
    pub resource: Resource,
}

/// The files named by `paths` (directories: their .yaml, .yml and .json files, sorted).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestsError> {
    let mut files = Vec::new();
    for path in paths {
        let read_err = |source: std::io::Error| ManifestsError::Read {
            path: path.display().to_string(),
            source,
        };
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            std::fs::metadata(path).map_err(read_err)?;
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Parse and validate every document; all problems are reported, not only the first.
pub fn load(
    sources: &[(String, String)],
    validator: &ManifestValidator,
) -> Result<Vec<Loaded>, Vec<ManifestsError>> {
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut errors = Vec::new();
    for (source, text) in sources {
        let docs = match parse_documents(text) {
            Ok(docs) => docs,
            Err(e) => {
                errors.push(ManifestsError::Invalid {
                    path: source.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for doc in docs {
            match validator.validate(&defaulted_namespace(doc)) {
                Ok(resource) => {
                    let object = describe(&resource);
                    if let Some(first) = seen.get(&object) {
                        errors.push(ManifestsError::Duplicate {
                            path: source.clone(),
                            object,
                            first: first.clone(),
                        });
                        continue;
                    }
                    seen.insert(object, source.clone());
                    loaded.push(Loaded {
                        source: source.clone(),
                        resource,
                    });
                }
                Err(e) => errors.push(ManifestsError::Invalid {
                    path: source.clone(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// As kubectl does with no namespace in the file and none in the context.
fn defaulted_namespace(mut doc: Value) -> Value {
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String("default".into()));
    }
    doc
}

/// `Transport default/orders-sink`
pub fn describe(resource: &Resource) -> String {
    let (kind, meta) = match resource {
        Resource::Transport(t) => ("Transport", &t.metadata),
        Resource::Connection(c) => ("Connection", &c.metadata),
    };
    format!(
        "{kind} {}",
        key(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default()
        )
    )
}

fn read_sources(files: &[PathBuf]) -> Result<Vec<(String, String)>, ManifestsError> {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|text| (f.display().to_string(), text))
                .map_err(|source| ManifestsError::Read {
                    path: f.display().to_string(),
                    source,
                })
        })
        .collect()
}

/// A local worker fed from manifest files, with the startup queue (docs/connection.md, Q1–Q6).
pub struct Standalone {
    worker: Arc<Worker>,
    queue: Mutex<StartupQueue>,
    /// Sent to the transports a connection delivers to, when ingest needs a token.
    ingest_token: Option<String>,
    epoch: Instant,
}

/// How long a connection may take to start before the next one is let in.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

impl Standalone {
    pub fn new(
        worker: Arc<Worker>,
        startup_concurrency: usize,
        ingest_token: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            worker,
            queue: Mutex::new(StartupQueue::new(
                startup_concurrency,
                STARTUP_TIMEOUT.as_millis() as u64,
            )),
            ingest_token,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, StartupQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Host what the manifests define: transports first, so connections find their targets.
    pub async fn apply(&self, loaded: Vec<Loaded>) {
        self.remove_missing(&loaded).await;
        let (transports, connections): (Vec<Loaded>, Vec<Loaded>) = loaded
            .into_iter()
            .partition(|l| matches!(l.resource, Resource::Transport(_)));
        for item in transports {
            let object = describe(&item.resource);
            let Resource::Transport(t) = item.resource else {
                continue;
            };
            match self.worker.host::<TransportRuntime>(*t, (), None).await {
                Ok((runtime, true)) => {
                    println!(
                        "{object}: {} (send transactions to {})",
                        runtime.state(),
                        runtime.report().endpoint
                    );
                    watch_transport(object, &runtime);
                }
                Ok(_) => {}
                Err(e) => eprintln!("{}: {e}", item.source),
            }
        }
        for item in connections {
            let object = describe(&item.resource);
            let Resource::Connection(c) = item.resource else {
                continue;
            };
            let key = key(
                c.metadata.namespace.as_deref().unwrap_or("default"),
                c.metadata.name.as_deref().unwrap_or_default(),
            );
            let resolved = self.resolve(&c, &key);
            match self
                .worker
                .host::<ConnectionRuntime>(*c, resolved, None)
                .await
            {
                Ok((runtime, true)) => {
                    println!("{object}: {}", runtime.derived().status);
                    watch_connection(object, &runtime);
                }
                Ok(_) => {}
                Err(e) => eprintln!("{}: {e}", item.source),
            }
        }
    }

    /// The files are the source of truth: what they no longer define stops being hosted (its
    /// queue or watermarks stay on disk, should it come back).
    async fn remove_missing(&self, loaded: &[Loaded]) {
        let defined: Vec<String> = loaded.iter().map(|l| describe(&l.resource)).collect();
        for runtime in self.worker.all::<ConnectionRuntime>() {
            let object = format!("Connection {}", runtime.key());
            if !defined.contains(&object) {
                self.queue().release(runtime.key(), self.now_ms());
                match self
                    .worker
                    .remove::<ConnectionRuntime>(runtime.key(), Purge::Keep)
                    .await
                {
                    Ok(_) => println!("{object}: removed from the manifests, no longer hosted"),
                    Err(e) => eprintln!("{object}: {e}"),
                }
            }
        }
        for runtime in self.worker.all::<TransportRuntime>() {
            let object = format!("Transport {}", runtime.key());
            if !defined.contains(&object) {
                match self
                    .worker
                    .remove::<TransportRuntime>(runtime.key(), Purge::Keep)
                    .await
                {
                    Ok(_) => println!(
                        "{object}: removed from the manifests, no longer hosted; its queue is kept"
                    ),
                    Err(e) => eprintln!("{object}: {e}"),
                }
            }
        }
    }

    /// The targets' endpoints and token, and the connection's place in the startup queue.
    fn resolve(&self, connection: &Connection, key: &str) -> Resolved {
        let namespace = connection
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        let mut transports = BTreeMap::new();
        for target in connection
            .spec
            .sync_sets
            .iter()
            .filter_map(|s| s.target.transport.as_ref())
        {
            if let Some(runtime) = self
                .worker
                .get::<TransportRuntime>(&wire::key(namespace, &target.name))
            {
                transports.insert(
                    target.name.clone(),
                    ResolvedTransport {
                        endpoint: runtime.report().endpoint,
                        token: self.ingest_token.clone(),
                    },
                );
            }
        }
        // Every enabled sync-set that names a transport finds it hosted.
        let can_run = connection
            .spec
            .sync_sets
            .iter()
            .filter(|s| s.enabled)
            .filter_map(|s| s.target.transport.as_ref())
            .all(|t| transports.contains_key(&t.name));
        let look = Look {
            started: connection.spec.started,
            can_run,
            previous: self
                .worker
                .get::<ConnectionRuntime>(key)
                .map(|c| c.derived().status),
            worker_ready: true,
            // Standalone has no annotations: restarting is the operator's.
            restart: false,
        };
        let startup = Startup::from(self.queue().observe(key, look, self.now_ms()));
        Resolved {
            transports,
            startup,
        }
    }

    /// Let the next connections into their startup as the ones before them finish it.
    pub async fn supervise(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.now_ms();
            let connections = self.worker.all::<ConnectionRuntime>();
            let mut queue = self.queue();
            for runtime in &connections {
                queue.settle(runtime.key(), runtime.derived().status, now);
            }
            queue.advance(now);
            for runtime in &connections {
                if runtime.spec().started {
                    runtime.set_startup(Startup::from(queue.admission(runtime.key())));
                }
            }
        }
    }
}

/// Print every state change of a transport.
fn watch_transport(object: String, runtime: &Arc<TransportRuntime>) {
    print_changes(object, runtime.watch_state());
}

/// Print every status change of a connection.
fn watch_connection(object: String, runtime: &Arc<ConnectionRuntime>) {
    print_changes(object, runtime.watch_status());
}

fn print_changes<T: Copy + PartialEq + std::fmt::Display + Send + Sync + 'static>(
    object: String,
    mut changes: watch::Receiver<T>,
) {
    let mut last = *changes.borrow_and_update();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let now = *changes.borrow_and_update();
            if now != last {
                println!("{object}: {last} -> {now}");
                last = now;
            }
        }
    });
}

/// `ferry standalone`'s arguments.
#[derive(clap::Args)]
pub struct StandaloneArgs {
    /// Manifest files or directories (multi-document YAML, as given to kubectl).
    #[arg(long, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    #[arg(long, default_value = "ferry-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Require this admin token (by default the API is open, on loopback).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Require this ingest token.
    #[arg(long)]
    pub ingest_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: crate::worker::flags::WorkerFlags,
    /// How many connections may be in their startup at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub startup_concurrency: u16,
}

impl StandaloneArgs {
    /// Run the manifests until a signal (or a failure, with its exit code).
    pub async fn run(self) -> Result<(), Failure> {
        self.flags.apply_to_process()?;
        let tokens = Tokens::read(
            self.admin_token_file.as_deref(),
            self.ingest_token_file.as_deref(),
        )
        .map_err(|e| Failure::new(e.to_string()))?;
        let tls = self.flags.tls();
        let listen = self.listen;
        let options = self.flags.options(self.data_dir, self.flags.url_of(listen));
        let limits = self.flags.limits();
        let concurrency = self.startup_concurrency.into();
        run(
            options,
            listen,
            tokens,
            limits,
            &self.manifests,
            concurrency,
            tls,
        )
        .await
    }
}

/// `ferry standalone`: listen, open the store, host what the manifests define, serve until a
/// signal. A manifest with a problem stops it before anything is hosted.
pub async fn run(
    options: WorkerOptions,
    listen: std::net::SocketAddr,
    tokens: Tokens,
    limits: ServerLimits,
    manifests: &[PathBuf],
    startup_concurrency: usize,
    tls: Option<crate::worker::tls::CertFiles>,
) -> Result<(), Failure> {
    let tls = process::tls_acceptor(tls)?;
    // Listening before anything is hosted: the endpoints printed next answer at once.
    let listener = process::bind(listen).await?;
    let worker = Worker::open(options, false)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    if !listen.ip().is_loopback() && (tokens.admin.is_none() || tokens.ingest.is_none()) {
        tracing::warn!(%listen, "standalone listens beyond this machine without an admin or ingest token: anyone who can reach it can change or feed its resources; pass --admin-token-file and --ingest-token-file");
    }
    let ingest_token = tokens.ingest.as_ref().map(|t| t.secret().to_owned());
    let runner = Standalone::new(worker.clone(), startup_concurrency, ingest_token);
    if let Err(errors) = start(&runner, manifests).await {
        for e in &errors {
            eprintln!("{e}");
        }
        return Err(Failure::new(format!(
            "{} problem(s) in the manifests; nothing was started",
            errors.len()
        )));
    }
    process::serve_open(worker, tokens, (listener, tls), limits).await
}

/// Load, validate and host; then follow the files. Errors at start-up stop everything.
pub async fn start(
    standalone: &Arc<Standalone>,
    paths: &[PathBuf],
) -> Result<(), Vec<ManifestsError>> {
    let validator = ManifestValidator::new();
    let (files, sources) = if paths.is_empty() {
        (
            vec![],
            vec![("(embedded default)".to_owned(), EMBEDDED_DEFAULT.to_owned())],
        )
    } else {
        let files = manifest_files(paths).map_err(|e| vec![e])?;
        let sources = read_sources(&files).map_err(|e| vec![e])?;
        (files, sources)
    };
    let loaded = load(&sources, &validator)?;
    standalone.apply(loaded).await;
    tokio::spawn(standalone.clone().supervise());
    if !files.is_empty() {
        tokio::spawn(follow(standalone.clone(), files, validator));
    }
    Ok(())
}

fn modified(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Apply the files again whenever one changes.
async fn follow(standalone: Arc<Standalone>, files: Vec<PathBuf>, validator: ManifestValidator) {
    let mut seen = modified(&files);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = modified(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = read_sources(&files)
            .map_err(|e| vec![e])
            .and_then(|sources| load(&sources, &validator));
        match loaded {
            Ok(loaded) => {
                println!("manifests changed: applying them");
                standalone.apply(loaded).await;
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                eprintln!("manifests not applied: nothing was changed");
            }
        }
    }
}
