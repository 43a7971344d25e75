//! `ferry`: the command line. Each subcommand's work lives in its own module.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use axum::http::StatusCode;
use clap::{Parser, Subcommand};
use ferry::{
    standalone,
    worker::{
        Worker, WorkerOptions, api,
        tokens::{Token, Tokens},
    },
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
        /// The URL producers use to reach this worker (reported as each transport's endpoint).
        #[arg(long, env = "FERRY_PUBLIC_URL")]
        public_url: Option<String>,
        #[command(flatten)]
        forwarding: Forwarding,
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
        forwarding: Forwarding,
        /// How many connections may be in their startup at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        startup_concurrency: u16,
    },
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
struct Forwarding {
    /// Deliveries in flight while a Store and Forward queue is forwarded. 1 (the default)
    /// sends each transaction after the host answered the previous one, so the host sees the
    /// queue's order exactly; more is faster but the host may see neighbours reordered.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    forward_window: u16,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ferry=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    ferry::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run(cli.command))
}

fn fail(message: String) -> ExitCode {
    eprintln!("ferry: {message}");
    ExitCode::FAILURE
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Crds => ExitCode::SUCCESS,
        Command::Worker {
            data_dir,
            listen,
            admin_token_file,
            ingest_token_file,
            public_url,
            forwarding,
        } => {
            let tokens = match (
                Token::read("admin", &admin_token_file),
                Token::read("ingest", &ingest_token_file),
            ) {
                (Ok(admin), Ok(ingest)) => Tokens {
                    admin: Some(admin),
                    ingest: Some(ingest),
                },
                (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
            };
            let public_url = public_url.unwrap_or_else(|| format!("http://{listen}"));
            let options = WorkerOptions {
                data_dir,
                public_url,
                forward_window: forwarding.forward_window.into(),
            };
            let listener = match bind(listen).await {
                Ok(l) => l,
                Err(code) => return code,
            };
            match Worker::open(options, true).await {
                Ok(worker) => serve(worker, listener, tokens).await,
                Err(e) => fail(e.to_string()),
            }
        }
        Command::Standalone {
            manifests,
            data_dir,
            listen,
            admin_token_file,
            ingest_token_file,
            forwarding,
            startup_concurrency,
        } => {
            let read =
                |what, path: Option<PathBuf>| path.map(|p| Token::read(what, &p)).transpose();
            let tokens = match (
                read("admin", admin_token_file),
                read("ingest", ingest_token_file),
            ) {
                (Ok(admin), Ok(ingest)) => Tokens { admin, ingest },
                (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
            };
            let options = WorkerOptions {
                data_dir,
                public_url: format!("http://{listen}"),
                forward_window: forwarding.forward_window.into(),
            };
            // Listening before anything is hosted: the endpoints printed next answer at once.
            let listener = match bind(listen).await {
                Ok(l) => l,
                Err(code) => return code,
            };
            let worker = match Worker::open(options, false).await {
                Ok(worker) => worker,
                Err(e) => return fail(e.to_string()),
            };
            if !listen.ip().is_loopback() && (tokens.admin.is_none() || tokens.ingest.is_none()) {
                tracing::warn!(%listen, "standalone listens beyond this machine without an admin or ingest token: anyone who can reach it can change or feed its resources; pass --admin-token-file and --ingest-token-file");
            }
            let ingest_token = tokens.ingest.as_ref().map(|t| t.secret().to_owned());
            let runner = standalone::Standalone::new(
                worker.clone(),
                startup_concurrency.into(),
                ingest_token,
            );
            if let Err(errors) = standalone::start(&runner, &manifests).await {
                for e in &errors {
                    eprintln!("{e}");
                }
                return fail(format!(
                    "{} problem(s) in the manifests; nothing was started",
                    errors.len()
                ));
            }
            serve(worker, listener, tokens).await
        }
        Command::Source {
            listen,
            orders,
            change_every,
            page_size,
        } => match ferry::source::serve(listen, orders, change_every.as_std(), page_size).await {
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

async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, ExitCode> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| fail(format!("cannot listen on {listen}: {e}")))
}

async fn serve(worker: Arc<Worker>, listener: tokio::net::TcpListener, tokens: Tokens) -> ExitCode {
    tracing::info!(listen = ?listener.local_addr().ok(), "worker API listening");
    let served = axum::serve(listener, api::router(worker.clone(), tokens))
        .with_graceful_shutdown(ferry::shutdown_signal())
        .await;
    worker.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("the API server stopped: {e}")),
    }
}
