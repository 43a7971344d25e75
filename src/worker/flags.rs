//! `ferry worker` and `ferry standalone`'s shared command line: every flag beside what it
//! configures (the worker's options, its server's limits, TLS, the process-wide destination
//! and trust settings), and `ferry worker` itself.

use std::{net::SocketAddr, path::PathBuf};

use super::{
    WorkerOptions,
    process::{self, Failure},
    server,
    tokens::Tokens,
};

/// `ferry worker`'s arguments.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Where the store (queues, desired state, totals) lives.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// File holding the token the admin routes require.
    #[arg(long)]
    pub admin_token_file: PathBuf,
    /// File holding the token ingest requires.
    #[arg(long)]
    pub ingest_token_file: PathBuf,
    /// A pool's worker: each transport takes only its own ingest token (given with its
    /// spec), never the one in --ingest-token-file.
    #[arg(long, env = "FERRY_OWN_INGEST_TOKENS")]
    pub own_ingest_tokens: bool,
    /// The URL producers use to reach this worker (reported as each transport's endpoint).
    #[arg(long, env = "FERRY_PUBLIC_URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub flags: WorkerFlags,
    #[command(flatten)]
    pub jetstream: JetStreamArgs,
}

/// A pool worker on JetStream (`WorkerPool.spec.queue.jetstream`): the queues and records of
/// what it hosts are on the pool's NATS JetStream, not on its volume.
#[derive(clap::Args)]
pub struct JetStreamArgs {
    /// The NATS servers (`nats://host:4222`, comma-separated).
    #[arg(long, env = "FERRY_JETSTREAM_URL")]
    jetstream_url: Option<String>,
    /// Replicas of each stream and of the pool's bucket (1, 3 or 5).
    #[arg(long, env = "FERRY_JETSTREAM_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    jetstream_replicas: u8,
    /// The pool's record bucket.
    #[arg(long, env = "FERRY_JETSTREAM_BUCKET", requires = "jetstream_url")]
    jetstream_bucket: Option<String>,
    /// This worker's name, written as the owner of what it takes (its pod's name).
    #[arg(long, env = "FERRY_JETSTREAM_OWNER")]
    jetstream_owner: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "FERRY_JETSTREAM_CREDS_FILE")]
    jetstream_creds_file: Option<PathBuf>,
    /// A NATS user, with --jetstream-password-file.
    #[arg(
        long,
        env = "FERRY_JETSTREAM_USER",
        requires = "jetstream_password_file"
    )]
    jetstream_user: Option<String>,
    #[arg(
        long,
        env = "FERRY_JETSTREAM_PASSWORD_FILE",
        requires = "jetstream_user"
    )]
    jetstream_password_file: Option<PathBuf>,
    /// A file holding a NATS token.
    #[arg(long, env = "FERRY_JETSTREAM_TOKEN_FILE")]
    jetstream_token_file: Option<PathBuf>,
    /// A directory (a mounted Secret) with one NATS login: `nats.creds`, or `token`, or
    /// `user` and `password`.
    #[arg(long, env = "FERRY_JETSTREAM_CREDENTIALS_DIR")]
    jetstream_credentials_dir: Option<PathBuf>,
    /// A CA (PEM) to verify the NATS servers by: TLS is then required.
    #[arg(long, env = "FERRY_JETSTREAM_CA_FILE")]
    jetstream_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for NATS.
    #[arg(
        long,
        env = "FERRY_JETSTREAM_CERT_FILE",
        requires = "jetstream_key_file"
    )]
    jetstream_cert_file: Option<PathBuf>,
    #[arg(
        long,
        env = "FERRY_JETSTREAM_KEY_FILE",
        requires = "jetstream_cert_file"
    )]
    jetstream_key_file: Option<PathBuf>,
}

impl JetStreamArgs {
    /// The settings, when the worker is on JetStream.
    pub fn settings(&self) -> Result<Option<crate::store::jetstream::Settings>, Failure> {
        use crate::store::jetstream::{Credentials, Settings};
        let Some(url) = self.jetstream_url.clone() else {
            return Ok(None);
        };
        let replicas = usize::from(self.jetstream_replicas);
        if ![1, 3, 5].contains(&replicas) {
            return Err(Failure::new(format!(
                "--jetstream-replicas {replicas}: must be 1, 3 or 5"
            )));
        }
        let owner = self
            .jetstream_owner
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .ok_or_else(|| Failure::new("--jetstream-owner is needed (the pod's name)"))?;
        let credentials = match &self.jetstream_credentials_dir {
            Some(dir) => Some(credentials_in(dir)?),
            None => None,
        };
        let credentials = match (
            &self.jetstream_creds_file,
            &self.jetstream_user,
            &self.jetstream_token_file,
        ) {
            (None, None, None) if credentials.is_some() => credentials.unwrap_or_default(),
            (Some(file), None, None) => Credentials::CredsFile(file.clone()),
            (None, Some(user), None) => Credentials::UserPassword {
                user: user.clone(),
                password_file: self.jetstream_password_file.clone().unwrap_or_default(),
            },
            (None, None, Some(file)) => Credentials::TokenFile(file.clone()),
            (None, None, None) => Credentials::None,
            _ => {
                return Err(Failure::new(
                    "give one of --jetstream-creds-file, --jetstream-user or --jetstream-token-file",
                ));
            }
        };
        Ok(Some(Settings {
            url,
            replicas,
            bucket: self
                .jetstream_bucket
                .clone()
                .unwrap_or_else(|| "FERRY_POOL".to_owned()),
            owner,
            credentials,
            ca_file: self.jetstream_ca_file.clone(),
            client_cert: self
                .jetstream_cert_file
                .clone()
                .zip(self.jetstream_key_file.clone()),
        }))
    }
}

/// The one NATS login a mounted Secret holds.
fn credentials_in(dir: &std::path::Path) -> Result<crate::store::jetstream::Credentials, Failure> {
    use crate::store::jetstream::Credentials;
    let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    match (
        file("nats.creds"),
        file("token"),
        file("user"),
        file("password"),
    ) {
        (Some(creds), None, None, None) => Ok(Credentials::CredsFile(creds)),
        (None, Some(token), None, None) => Ok(Credentials::TokenFile(token)),
        (None, None, Some(user), Some(password)) => Ok(Credentials::UserPassword {
            user: std::fs::read_to_string(&user)
                .map_err(|e| Failure::new(format!("{}: {e}", user.display())))?
                .trim()
                .to_owned(),
            password_file: password,
        }),
        (None, None, None, None) => Err(Failure::new(format!(
            "--jetstream-credentials-dir {}: holds none of nats.creds, token, or user and password (the pool's credentialsSecret)",
            dir.display()
        ))),
        _ => Err(Failure::new(format!(
            "--jetstream-credentials-dir {}: holds more than one login; keep one of nats.creds, token, or user and password",
            dir.display()
        ))),
    }
}

impl WorkerArgs {
    /// Run the worker until a signal (or a failure, with its exit code).
    pub async fn run(self) -> Result<(), Failure> {
        self.flags.apply_to_process()?;
        let tokens = Tokens::read(Some(&self.admin_token_file), Some(&self.ingest_token_file))
            .map_err(|e| Failure::new(e.to_string()))?;
        let tokens = Tokens {
            own_ingest_only: self.own_ingest_tokens,
            ..tokens
        };
        let tls = self.flags.tls();
        let listen = self.listen;
        let public_url = self.public_url.unwrap_or_else(|| self.flags.url_of(listen));
        let options = WorkerOptions {
            jetstream: self.jetstream.settings()?,
            ..self.flags.options(self.data_dir, public_url)
        };
        process::run_worker(options, listen, tokens, self.flags.limits(), tls).await
    }
}

/// What `ferry worker` and `ferry standalone` share: forwarding and the limits of the server.
#[derive(clap::Args)]
pub struct WorkerFlags {
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
    memory_budget: crate::api::quantity::ByteQuantity,
    /// Connections served at once (more wait in the listen backlog).
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = server::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// How long a request may take to send its head; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, env = "FERRY_HEADER_READ_TIMEOUT", default_value = "30s")]
    header_read_timeout: crate::api::duration::Duration,
    /// On SIGTERM, how long requests already in their handlers may take to answer before the
    /// connections are closed and the records saved (keep it well below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "FERRY_SHUTDOWN_TIMEOUT", default_value = "10s")]
    shutdown_timeout: crate::api::duration::Duration,
    /// Address ranges (CIDRs, comma-separated) no host, source or target may be reached at:
    /// a URL with such an address is refused, and a name that resolves only to such addresses
    /// is not connected to (checked at every connect). The operator passes its own list to its
    /// workers; "" allows every address.
    #[arg(long, env = "FERRY_FORBIDDEN_DESTINATIONS", value_parser = crate::destinations::Forbidden::parse, default_value = crate::destinations::LINK_LOCAL)]
    forbidden_destinations: crate::destinations::Forbidden,
}

impl WorkerFlags {
    pub fn options(&self, data_dir: PathBuf, public_url: String) -> WorkerOptions {
        WorkerOptions {
            data_dir,
            public_url,
            forward_window: self.forward_window.into(),
            memory_budget: self.memory_budget.bytes(),
            jetstream: None,
        }
    }

    /// `http(s)://<listen>`: where this process answers, as it serves.
    pub fn url_of(&self, listen: SocketAddr) -> String {
        let scheme = if self.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{listen}")
    }

    /// The certificate and key to serve TLS with, when given.
    pub fn tls(&self) -> Option<crate::worker::tls::CertFiles> {
        let (cert, key) = self.tls_cert_file.clone().zip(self.tls_key_file.clone())?;
        Some(crate::worker::tls::CertFiles { cert, key })
    }

    pub fn limits(&self) -> server::ServerLimits {
        server::ServerLimits {
            header_read_timeout: self.header_read_timeout.as_std(),
            max_connections: self.max_connections as usize,
            shutdown_timeout: self.shutdown_timeout.as_std(),
        }
    }
}

impl WorkerFlags {
    /// What this process may reach (`--forbidden-destinations`) and trusts besides the
    /// platform's roots (`--ca-file`).
    pub fn apply_to_process(&self) -> Result<(), Failure> {
        crate::destinations::forbid_for_process(self.forbidden_destinations.clone());
        if let Some(file) = &self.ca_file {
            std::fs::read(file)
                .map_err(|e| format!("--ca-file {}: {e}", file.display()))
                .and_then(|pem| crate::trust::trust_for_process(&pem, file))
                .map_err(Failure::new)?;
        }
        Ok(())
    }
}
