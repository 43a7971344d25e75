//! The worker's HTTP server: the API router behind limits a hostile or broken client cannot
//! get around.
//!
//! - the request head must arrive within `header_read_timeout` of a connection being ready
//!   for it, which also closes a keep-alive connection idle that long (hyper's timer);
//! - a body that stops sending is answered 408 by the routes ([`super::api::BODY_IDLE_TIMEOUT`]);
//! - at most `max_connections` connections are served; more wait in the listen backlog;
//! - a connection closes with a lingering close ([`super::linger`]), so an answer sent before
//!   the request body was read (413, 503 over the memory budget) reaches a client that is
//!   still sending, instead of a reset;
//! - on shutdown: nothing new is accepted, connections without a request in a handler (idle,
//!   or a head still arriving) close at once, bodies still arriving are refused with 503, and
//!   requests in their handlers get `shutdown_timeout` to answer. Then every connection is
//!   closed and the caller saves the records, well within the pod's termination grace period.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{Request, body::Incoming, service::Service};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

/// Defaults, also written into the worker pods the operator builds.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_CONNECTIONS: usize = 1024;
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }
}

/// Counts a connection's requests inside the router while alive.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection until it ends, or — when the server stops — at once if nothing of ours runs
/// on it, else once its requests are answered.
async fn serve_connection<IO, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: IO,
    service: S,
    busy: Arc<AtomicUsize>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = async { let _ = closing.wait_for(|closing| *closing).await; } => {
            // Nothing of ours runs on this connection: close it now.
            if busy.load(Ordering::SeqCst) > 0 {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Serve `service` on `listener` until `shutdown` resolves, then stop as the module docs say.
/// With `tls`, every connection is a TLS one (its handshake within the header read timeout);
/// `on_stop` runs when the shutdown begins (the worker tells its handlers).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ServerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    on_stop: impl FnOnce(),
) where
    S: Service<
            Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (close, closing) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(AtomicUsize::new(0));
        let service = {
            let busy = busy.clone();
            let inner = service.clone();
            hyper::service::service_fn(move |request| {
                let guard = Busy::enter(&busy);
                let answer = inner.call(request);
                async move {
                    let answer = answer.await;
                    drop(guard);
                    answer
                }
            })
        };
        // A refusal sent before the body is read reaches a client still sending it.
        let stream = super::linger::Lingering::new(stream);
        let (builder, closing, tls) = (builder.clone(), closing.clone(), tls.clone());
        let handshake_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            match tls {
                None => serve_connection(&builder, stream, service, busy, closing).await,
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, stream, service, busy, closing).await;
                        }
                        // Not TLS (plain HTTP), a bad handshake, or too slow: closed.
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake refused"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = connections.len();
    on_stop();
    let _ = close.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            timeout_secs = limits.shutdown_timeout.as_secs_f64(),
            "requests still running at the shutdown deadline; closing their connections"
        );
    } else {
        tracing::info!(closed = open, "connections closed");
    }
    connections.shutdown().await;
}
