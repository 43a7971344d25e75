//! The worker's HTTP API (DESIGN.md, "Worker HTTP API").

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes, to_bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::{
    Worker, WorkerError, key, metrics,
    tokens::{Tokens, allowed},
};
use crate::transport::runtime::Outcome;

/// The largest body any route reads: the largest `maxTransactionBytes` the CRD allows, and
/// generous room for a manifest.
const MAX_BODY: usize = 64 << 20;
const MAX_ID_LEN: usize = 128;

#[derive(Clone)]
struct App {
    worker: Arc<Worker>,
    tokens: Tokens,
    registry: Arc<Registry>,
}

/// An error answer: JSON with a human-readable `message`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"message": self.1}))).into_response()
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let status = match &e {
            WorkerError::Invalid(_)
            | WorkerError::WrongKind { .. }
            | WorkerError::NameMismatch { .. }
            | WorkerError::Resolved(_) => StatusCode::BAD_REQUEST,
            WorkerError::Runtime { .. }
            | WorkerError::Connection { .. }
            | WorkerError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

pub fn router(worker: Arc<Worker>, tokens: Tokens) -> Router {
    let registry = Arc::new(metrics::registry(worker.clone()));
    let app = App {
        worker,
        tokens,
        registry,
    };
    Router::new()
        .route(
            "/v1/transports/{namespace}/{name}",
            put(put_transport)
                .get(get_transport)
                .delete(delete_transport),
        )
        .route(
            "/v1/transports/{namespace}/{name}/transactions",
            post(ingest),
        )
        .route(
            "/v1/connections/{namespace}/{name}",
            put(put_connection)
                .get(get_connection)
                .delete(delete_connection),
        )
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .with_state(app)
}

fn admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if allowed(app.tokens.admin.as_ref(), headers) {
        Ok(())
    } else {
        Err(unauthorized("admin"))
    }
}

fn unauthorized(which: &str) -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        format!(
            "this route needs the {which} token, as 'Authorization: Bearer <token>' or 'Ferry-Token: <token>'"
        ),
    )
}

fn not_hosted(key: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no transport {key} is hosted here"),
    )
}

/// The JSON body of a PUT.
async fn manifest(body: Body) -> Result<Value, ApiError> {
    let body = to_bytes(body, MAX_BODY).await.map_err(|e| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the body: {e}"),
        )
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn put_transport(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    admin(&app, &headers)?;
    let doc = manifest(body).await?;
    let (runtime, created) = app
        .worker
        .apply_transport(&doc, Some(&key(&namespace, &name)))
        .await?;
    Ok((created_or_ok(created), Json(runtime.report())).into_response())
}

async fn put_connection(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    admin(&app, &headers)?;
    let doc = manifest(body).await?;
    let (runtime, created) = app
        .worker
        .apply_connection(&doc, Some(&key(&namespace, &name)))
        .await?;
    Ok((created_or_ok(created), Json(runtime.report())).into_response())
}

fn no_connection(key: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no connection {key} is hosted here"),
    )
}

async fn get_connection(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admin(&app, &headers)?;
    let key = key(&namespace, &name);
    let runtime = app
        .worker
        .connection(&key)
        .ok_or_else(|| no_connection(&key))?;
    Ok(Json(runtime.report()).into_response())
}

async fn delete_connection(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admin(&app, &headers)?;
    let key = key(&namespace, &name);
    if !app.worker.remove_connection(&key).await? {
        return Err(no_connection(&key));
    }
    let message = format!("connection {key} is no longer hosted; its watermarks are kept");
    Ok(Json(json!({ "message": message })).into_response())
}

async fn get_transport(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admin(&app, &headers)?;
    let key = key(&namespace, &name);
    let runtime = app.worker.transport(&key).ok_or_else(|| not_hosted(&key))?;
    Ok(Json(runtime.report()).into_response())
}

async fn delete_transport(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admin(&app, &headers)?;
    let key = key(&namespace, &name);
    if !app.worker.remove_transport(&key).await? {
        return Err(not_hosted(&key));
    }
    Ok(
        Json(json!({"message": format!("transport {key} is no longer hosted; its queue is kept")}))
            .into_response(),
    )
}

async fn ingest(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    if !allowed(app.tokens.ingest.as_ref(), &headers) {
        return Err(unauthorized("ingest"));
    }
    let key = key(&namespace, &name);
    let runtime = app.worker.transport(&key).ok_or_else(|| not_hosted(&key))?;
    let limit = runtime.spec().max_transaction_bytes.bytes() as usize;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the transaction is larger than maxTransactionBytes ({limit} bytes) of transport {key}"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let payload: Bytes = to_bytes(body, limit).await.map_err(|_| too_large())?;
    let id = match headers.get("ferry-transaction-id") {
        Some(v) => {
            let id = v.to_str().ok().filter(|id| valid_id(id)).ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Ferry-Transaction-Id must be 1 to {MAX_ID_LEN} visible ASCII characters"
                    ),
                )
            })?;
            id.to_owned()
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let result = runtime.ingest(id, content_type, payload).await;
    let status = match result.outcome {
        Outcome::Delivered => StatusCode::OK,
        Outcome::Stored => StatusCode::ACCEPTED,
        Outcome::Failed => StatusCode::SERVICE_UNAVAILABLE,
    };
    Ok((status, Json(result)).into_response())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

async fn serve_metrics(State(app): State<App>) -> Answer {
    let text = metrics::render(&app.registry).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
