//! The queue and records of a WorkerPool's resources on a replicated NATS JetStream
//! (`WorkerPool.spec.queue.jetstream`; docs/resources.md "Pools on JetStream"), instead of a
//! worker's redb file: a transport's queue is a stream of its own, every resource's record
//! (state, totals, watermarks, owner, epoch) a value in the pool's KV bucket written by
//! compare-and-swap, so any worker of the pool can host any of its resources, and a worker
//! that lost one (it was moved while the worker hung) can never write for it again.
//!
//! `names` and `config` are pure (what ferry asks of the server); `owned` is the fenced
//! record; `queue` a transport's queue on its stream.

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_nats::jetstream;

pub mod config;
pub mod names;
mod owned;
mod queue;

pub use config::{Owner, Replicas, StreamLimits};
pub use owned::{OwnedRecord, Settled};
pub use queue::StreamQueue;

/// Every wait on the server (a publish's acknowledgement from a quorum, a read, a
/// compare-and-swap) ends after this long: the server is then unavailable to ferry.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("cannot connect to the JetStream server {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "the JetStream server at {url} is version {version}; ferry needs {}.{}.{} or newer (older servers lack sync_interval: always and have known data-loss bugs in clustered JetStream): upgrade the NATS servers",
        config::MIN_SERVER.0, config::MIN_SERVER.1, config::MIN_SERVER.2
    )]
    ServerTooOld { url: String, version: String },
    /// No quorum, the server unreachable, or no answer within [`OP_TIMEOUT`].
    #[error("the JetStream queue is unavailable ({0}); nothing was stored")]
    Unavailable(String),
    /// Another worker took the resource (a higher epoch): this one must stop at once.
    #[error(
        "{key} was moved to another worker (its record was taken over{}); this worker no longer serves it",
        owner.as_deref().map(|o| format!(" by {o}")).unwrap_or_default()
    )]
    Fenced { key: String, owner: Option<String> },
    #[error("the record {key} in the pool's bucket cannot be read: {reason}")]
    Unreadable { key: String, reason: String },
    #[error("the JetStream server refused: {0}")]
    Refused(String),
}

impl JetStreamError {
    fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Bound a wait on the server.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, JetStreamError> {
    match tokio::time::timeout(OP_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(JetStreamError::Unavailable(format!("{what}: {e}"))),
        Err(_) => Err(JetStreamError::Unavailable(format!(
            "{what}: no answer within {}s",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

/// How a worker reaches the pool's JetStream (worker flags, from the pool's spec).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `nats://host:port` (comma-separated for several).
    pub url: String,
    pub replicas: usize,
    /// The pool's bucket (`names::pool_bucket`).
    pub bucket: String,
    /// This worker's name, written as the owner of what it takes.
    pub owner: String,
    pub credentials: Credentials,
    /// A CA to verify the server by, and a client certificate and key.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// One of NATS' ways to log in, each read from a file (mounted from the pool's Secret).
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    #[default]
    None,
    CredsFile(PathBuf),
    UserPassword {
        user: String,
        password_file: PathBuf,
    },
    TokenFile(PathBuf),
}

/// A worker's connection to the pool's JetStream and its record bucket.
#[derive(Clone)]
pub struct JetStream {
    client: async_nats::Client,
    context: jetstream::Context,
    bucket: jetstream::kv::Store,
    settings: Arc<Settings>,
}

impl JetStream {
    /// Connect, refuse a server older than [`config::MIN_SERVER`], and open (or make) the
    /// pool's bucket.
    pub async fn connect(settings: Settings) -> Result<Self, JetStreamError> {
        let url = settings.url.clone();
        let connect_error = |reason: String| JetStreamError::Connect {
            url: url.clone(),
            reason,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("ferry-worker {}", settings.owner))
            .connection_timeout(OP_TIMEOUT)
            .request_timeout(Some(OP_TIMEOUT));
        options = match &settings.credentials {
            Credentials::None => options,
            Credentials::CredsFile(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| connect_error(format!("{}: {e}", path.display())))?,
            Credentials::UserPassword {
                user,
                password_file,
            } => options.user_and_password(user.clone(), read_secret(password_file)?),
            Credentials::TokenFile(path) => options.token(read_secret(path)?),
        };
        if let Some(ca) = &settings.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &settings.client_cert {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let addrs: Vec<async_nats::ServerAddr> = settings
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| connect_error(format!("not a NATS URL: {e}")))?;
        let client = tokio::time::timeout(OP_TIMEOUT * 2, options.connect(addrs))
            .await
            .map_err(|_| connect_error("no answer".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let version = client.server_info().version;
        if !config::supported(&version) {
            return Err(JetStreamError::ServerTooOld { url, version });
        }
        let mut context = jetstream::new(client.clone());
        context.set_timeout(OP_TIMEOUT);
        let bucket_config = config::bucket_config(&settings.bucket, Replicas(settings.replicas));
        let bucket = match bounded("open the bucket", context.get_key_value(&settings.bucket)).await
        {
            Ok(bucket) => bucket,
            Err(_) => bounded("create the bucket", context.create_key_value(bucket_config)).await?,
        };
        Ok(Self {
            client,
            context,
            bucket,
            settings: Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The server's version, as it said at connect.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// Whether the connection to a server is up now (a quorum is another matter: a write
    /// tells).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Take `key`'s record for this worker (epoch + 1; the previous owner is fenced).
    pub async fn take(&self, key: &str) -> Result<OwnedRecord, JetStreamError> {
        OwnedRecord::take(self.bucket.clone(), key, &self.settings.owner).await
    }

    /// Remove a record for good (a resource deleted).
    pub async fn forget(&self, key: &str) -> Result<(), JetStreamError> {
        bounded("delete the record", self.bucket.purge(key)).await
    }

    pub(crate) fn context(&self) -> &jetstream::Context {
        &self.context
    }

    pub(crate) fn replicas(&self) -> Replicas {
        Replicas(self.settings.replicas)
    }
}

fn read_secret(path: &PathBuf) -> Result<String, JetStreamError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| JetStreamError::Connect {
            url: String::new(),
            reason: format!("cannot read {}: {e}", path.display()),
        })
}
