//! The worker as a process (`ferry worker`, and the server `ferry standalone` runs): listen
//! first, open the store and host the saved resources meanwhile (healthz ok, everything else
//! 503 until then), serve until a signal, then save every record. It stops on its own when the
//! store cannot be opened or its writer failed.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use tokio::{net::TcpListener, sync::watch};

use super::{Worker, WorkerOptions, api, server, starting::StartingService, tokens::Tokens};

/// Why the process stops with an error, and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// A failure with the usual exit code, 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

/// The exit code of a worker whose store's writer failed (EX_SOFTWARE).
pub const WRITER_FAILED: u8 = 70;

pub async fn bind(listen: SocketAddr) -> Result<TcpListener, Failure> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::new(format!("cannot listen on {listen}: {e}")))
}

/// `ferry worker`: serve at once while the store opens and every saved resource is hosted
/// again (which can take long after a crash), then until a signal.
pub async fn run_worker(
    options: WorkerOptions,
    listen: SocketAddr,
    tokens: Tokens,
    limits: server::ServerLimits,
    tls: Option<super::tls::CertFiles>,
) -> Result<(), Failure> {
    let tls = tls_acceptor(tls)?;
    let listener = bind(listen).await?;
    let opened = Opened::default();
    let (failed, open_failed) = tokio::sync::oneshot::channel();
    {
        let opened = opened.clone();
        tokio::spawn(async move {
            match Worker::open(options, true).await {
                Ok(worker) => opened.set(worker, tokens),
                Err(e) => {
                    let _ = failed.send(e.to_string());
                }
            }
        });
    }
    serve(opened, (listener, tls), limits, open_failed).await
}

/// TLS from these files, their renewals followed. Called before anything listens: a worker
/// that cannot serve its certificate must not serve plain HTTP instead.
pub fn tls_acceptor(
    tls: Option<super::tls::CertFiles>,
) -> Result<Option<tokio_rustls::TlsAcceptor>, Failure> {
    let Some(files) = tls else {
        return Ok(None);
    };
    let (acceptor, cert) = super::tls::acceptor(files).map_err(|e| Failure::new(e.to_string()))?;
    cert.watch(super::tls::RELOAD_EVERY);
    Ok(Some(acceptor))
}

/// Serve a worker that is open already (standalone) until a signal; TLS only with `tls`.
pub async fn serve_open(
    worker: Arc<Worker>,
    tokens: Tokens,
    (listener, tls): (TcpListener, Option<tokio_rustls::TlsAcceptor>),
    limits: server::ServerLimits,
) -> Result<(), Failure> {
    let opened = Opened::default();
    opened.set(worker, tokens);
    let (_never, open_failed) = tokio::sync::oneshot::channel();
    serve(opened, (listener, tls), limits, open_failed).await
}

/// The worker once its store is open, and its HTTP service (what the starting service hands
/// every request to from then on).
#[derive(Clone)]
struct Opened {
    worker: watch::Sender<Option<Arc<Worker>>>,
    service: Arc<OnceLock<api::WorkerService>>,
}

impl Default for Opened {
    fn default() -> Self {
        Self {
            worker: watch::channel(None).0,
            service: Arc::default(),
        }
    }
}

impl Opened {
    fn set(&self, worker: Arc<Worker>, tokens: Tokens) {
        let _ = self.service.set(api::service(worker.clone(), tokens));
        self.worker.send_replace(Some(worker));
    }

    fn worker(&self) -> Option<Arc<Worker>> {
        self.worker.borrow().clone()
    }

    /// Resolves once the store is open and its writer then failed.
    async fn writer_failed(&self) {
        let mut opened = self.worker.subscribe();
        let Ok(worker) = opened.wait_for(Option::is_some).await.map(|w| w.clone()) else {
            return std::future::pending().await;
        };
        if let Some(worker) = worker {
            worker.store().writer_failed().await;
        }
    }
}

/// Serve until a signal (or until the store could not be opened), then save the records.
async fn serve(
    opened: Opened,
    (listener, tls): (TcpListener, Option<tokio_rustls::TlsAcceptor>),
    limits: server::ServerLimits,
    open_failed: tokio::sync::oneshot::Receiver<String>,
) -> Result<(), Failure> {
    tracing::info!(listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), tls = tls.is_some(), "worker API listening");
    let service = StartingService::new(opened.service.clone());
    let (failed, why) = tokio::sync::oneshot::channel();
    let stop = {
        let opened = opened.clone();
        async move {
            tokio::select! {
                () = crate::shutdown_signal() => {}
                Ok(error) = open_failed => {
                    let _ = failed.send(Failure::new(error));
                }
                // A store whose writer failed refuses every write: stop, so the pod restarts
                // on the last commit, rather than fail every transaction while looking alive.
                () = opened.writer_failed() => {
                    let _ = failed.send(Failure {
                        message: "the store's writer failed; every write is refused, so the worker stops (it starts again on the last commit)".into(),
                        code: WRITER_FAILED,
                    });
                }
            }
        }
    };
    let stopping = opened.clone();
    server::serve(listener, service, limits, tls, stop, move || {
        if let Some(worker) = stopping.worker() {
            worker.begin_stop();
        }
    })
    .await;
    if let Ok(failure) = why.await {
        return Err(failure);
    }
    if let Some(worker) = opened.worker() {
        worker.shutdown().await;
        tracing::info!("records saved; stopped");
    }
    Ok(())
}
