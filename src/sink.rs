//! `ferry sink`: a sample host for transports. It accepts every POST, prints what arrived
//! and answers 200, or the status given with `--answer` (to try 4xx and 5xx behaviour).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};

#[derive(Clone)]
struct Sink {
    answer: StatusCode,
    quiet: bool,
    received: Arc<AtomicU64>,
}

pub fn router(answer: StatusCode, quiet: bool) -> Router {
    let sink = Sink {
        answer,
        quiet,
        received: Arc::new(AtomicU64::new(0)),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/{*path}", post(receive))
        .route("/", post(receive))
        .with_state(sink)
}

async fn receive(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = sink.received.fetch_add(1, Ordering::Relaxed) + 1;
    if !sink.quiet {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let text = String::from_utf8_lossy(&body[..body.len().min(80)]).replace('\n', " ");
        println!(
            "#{n} {} from {} ({} bytes): {text} -> {}",
            header("ferry-transaction-id"),
            header("ferry-transport"),
            body.len(),
            sink.answer.as_u16()
        );
    }
    sink.answer
}

pub async fn serve(listen: SocketAddr, answer: StatusCode, quiet: bool) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "ferry sink listening on http://{}, answering {}",
        listener.local_addr()?,
        answer.as_u16()
    );
    axum::serve(listener, router(answer, quiet))
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
}

/// `ferry sink`'s arguments.
#[derive(clap::Args)]
pub struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// The status to answer with (200; try 503 or 400).
    #[arg(long, default_value_t = 200)]
    pub answer: u16,
    /// Do not print each transaction.
    #[arg(long)]
    pub quiet: bool,
}

impl SinkArgs {
    /// Serve until a signal; a failure names the address or the status.
    pub async fn run(self) -> Result<(), String> {
        let listen = self.listen;
        let answer = StatusCode::from_u16(self.answer)
            .map_err(|_| format!("--answer {} is not an HTTP status", self.answer))?;
        serve(listen, answer, self.quiet)
            .await
            .map_err(|e| format!("sink on {listen}: {e}"))
    }
}
