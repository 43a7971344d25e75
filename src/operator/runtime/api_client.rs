//! The operator's client of the API server: at most `--api-concurrency` requests in flight at
//! once, watches aside.
//!
//! kube's client speaks HTTP/1.1, one request per connection: a thousand reconciles started
//! together (the operator's start, a restart) would open a thousand TLS connections, each
//! with its buffers, for a burst the API server works through one at a time anyway
//! (measured at 1,000 Transports: ~25 MiB of idle connections after a restart, 92 MiB peak
//! heap). Bounding the calls, not the reconciles, keeps a reconcile that waits on a starting
//! worker from holding a place. Watches are long-lived and never wait for a place.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt, buffer::Buffer};

/// A kube client whose calls (not watches) take one of `concurrency` places.
pub async fn bounded(concurrency: usize) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&BoundedCallsLayer::new(concurrency))
        .build())
}

/// Wraps a service so that requests other than watches wait for one of a fixed number of
/// places, held until the response head arrives.
#[derive(Clone)]
pub struct BoundedCallsLayer {
    places: Arc<Semaphore>,
}

impl BoundedCallsLayer {
    pub fn new(concurrency: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }
}

/// kube's stack (one boxed service) cannot be cloned; a buffer in front of it can, so a
/// request waiting for a place holds nothing of it.
impl<S> Layer<S> for BoundedCallsLayer
where
    S: Service<Request<kube::client::Body>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<tower::BoxError> + Send + Sync,
{
    type Service = BoundedCalls<Buffer<Request<kube::client::Body>, S::Future>>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundedCalls {
            inner: Buffer::new(inner, BUFFER),
            places: self.places.clone(),
        }
    }
}

/// Requests handed to kube's stack and not yet taken by it (kube's own buffer is as deep).
const BUFFER: usize = 1024;

#[derive(Clone)]
pub struct BoundedCalls<S> {
    inner: S,
    places: Arc<Semaphore>,
}

/// A watch (`?watch=true`, or any true of Go's `ParseBool`) runs as long as the operator: it
/// takes no place.
fn is_watch<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| {
        query.split('&').any(|pair| {
            matches!(
                pair.split_once('='),
                Some(("watch", "true" | "1" | "t" | "T" | "TRUE" | "True"))
            )
        })
    })
}

impl<S, B> Service<Request<B>> for BoundedCalls<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    /// Readiness is asked of (a clone of) the inner service once a place is taken, in `call`.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let places = (!is_watch(&request)).then(|| self.places.clone());
        Box::pin(async move {
            // The semaphore is never closed: `acquire_owned` only fails on a closed one.
            let _place = match places {
                Some(places) => places.acquire_owned().await.ok(),
                None => None,
            };
            inner.oneshot(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::get(uri).body(()).expect("a request")
    }

    #[test]
    fn watches_are_told_from_calls() {
        let table = [
            ("/api/v1/pods?watch=true&resourceVersion=1", true),
            ("/api/v1/pods?resourceVersion=1&watch=1", true),
            ("/api/v1/pods?allowWatchBookmarks=true&watch=true", true),
            ("/api/v1/pods", false),
            ("/api/v1/pods?limit=250", false),
            ("/api/v1/pods?watch=false", false),
            ("/api/v1/pods?allowWatchBookmarks=true", false),
            ("/api/v1/namespaces/watch/pods/watch", false),
            ("/api/v1/pods?labelSelector=watch%3Dtrue", false),
        ];
        for (uri, watch) in table {
            assert_eq!(is_watch(&request(uri)), watch, "{uri}");
        }
    }

    /// A service that counts how many calls are in it at once and answers after a while.
    #[derive(Clone, Default)]
    struct Slow {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Service<Request<()>> for Slow {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<(), Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let (now, most) = (self.now.clone(), self.most.clone());
            Box::pin(async move {
                let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn calls_take_places_and_watches_do_not() {
        let slow = Slow::default();
        let service = BoundedCalls {
            inner: slow.clone(),
            places: Arc::new(Semaphore::new(3)),
        };
        let calls = (0..20).map(|_| service.clone().oneshot(request("/api/v1/pods")));
        futures::future::join_all(calls).await;
        assert_eq!(
            slow.most.load(Ordering::SeqCst),
            3,
            "at most 3 calls at once"
        );

        // Watches pass even while every place is taken.
        slow.most.store(0, Ordering::SeqCst);
        let calls = (0..6).map(|_| service.clone().oneshot(request("/api/v1/pods")));
        let watches = (0..5).map(|_| service.clone().oneshot(request("/api/v1/pods?watch=true")));
        futures::future::join(
            futures::future::join_all(calls),
            futures::future::join_all(watches),
        )
        .await;
        assert_eq!(slow.most.load(Ordering::SeqCst), 3 + 5);
    }
}
