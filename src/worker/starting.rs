//! The worker's HTTP service from the moment it listens: until its store is open and every
//! saved resource is hosted again, `/healthz` answers ok (the process is alive, so a long
//! recovery is not killed by its liveness probe), `/readyz` and every other route answer 503
//! with `Retry-After` (nothing is routed to it, nothing is refused for good); then every
//! request goes to the worker's own service.

use std::sync::{Arc, OnceLock};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hyper::service::Service;

use super::api::WorkerService;

#[derive(Clone)]
pub struct StartingService {
    ready: Arc<OnceLock<WorkerService>>,
}

impl StartingService {
    /// Answers as a starting worker until `ready` holds the worker's service.
    pub fn new(ready: Arc<OnceLock<WorkerService>>) -> Self {
        Self { ready }
    }
}

/// What a starting worker answers `path`.
fn starting(path: &str) -> Response {
    if path == "/healthz" {
        return "ok".into_response();
    }
    let mut answer = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "message": "the worker is starting: its store is being opened and its resources hosted again"
        })),
    )
        .into_response();
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

impl Service<http::Request<hyper::body::Incoming>> for StartingService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        match self.ready.get() {
            Some(service) => service.call(request),
            None => {
                let answer = starting(request.uri().path());
                Box::pin(async move { Ok(answer) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_starting_worker_is_alive_but_not_ready() {
        let alive = starting("/healthz");
        assert_eq!(alive.status(), StatusCode::OK);
        for path in ["/readyz", "/v1/transports/plant-a/erp", "/metrics"] {
            let answer = starting(path);
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(answer.headers()[header::RETRY_AFTER], "1", "{path}");
        }
    }
}
