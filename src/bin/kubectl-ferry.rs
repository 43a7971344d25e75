//! `kubectl-ferry`: the kubectl plugin (`kubectl ferry ...` once it is on the PATH). The work
//! is in `ferry::plugin`.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use ferry::plugin::{Cli, connect, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kubectl ferry: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let outcome = match connect(&cli).await {
            Ok((client, namespace)) => run(&cli, client, &namespace, Duration::from_secs(1)).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(text) => {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kubectl ferry: {}", ferry::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}
