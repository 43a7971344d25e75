//! `ferry`: the command line, parsed and dispatched. Each subcommand's arguments live beside
//! what they configure (`operator::flags`, `worker::flags`, `standalone`, `source`, `sink`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry::worker::process;

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
    Worker(Box<ferry::worker::flags::WorkerArgs>),
    /// Run Transport manifests locally, without Kubernetes (the embedded default when no
    /// --manifests are given).
    Standalone(Box<ferry::standalone::StandaloneArgs>),
    /// The controller: watches Transports and Connections, runs a worker for each, writes
    /// their status.
    Operator(Box<ferry::operator::flags::Flags>),
    /// A sample source for connections: orders that change every few seconds.
    Source(ferry::source::SourceArgs),
    /// A sample host for transports: prints every transaction it receives.
    Sink(ferry::sink::SinkArgs),
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
    let done = |outcome: Result<(), String>| match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    };
    match command {
        Command::Crds => ExitCode::SUCCESS,
        Command::Worker(args) => exit(args.run().await),
        Command::Standalone(args) => exit(args.run().await),
        Command::Operator(flags) => match flags.options(log_format) {
            Ok(options) => done(
                ferry::operator::run::run(options)
                    .await
                    .map_err(|e| ferry::error_chain(&e)),
            ),
            Err(e) => fail(e),
        },
        Command::Source(args) => done(args.run().await),
        Command::Sink(args) => done(args.run().await),
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
