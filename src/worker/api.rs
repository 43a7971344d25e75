//! The worker's HTTP API (DESIGN.md, "Worker HTTP API").

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes, to_bytes},
    extract::{Path, State, rejection::PathRejection},
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
            "/v1/{kind}/{namespace}/{name}",
            put(put_resource).get(get_resource).delete(delete_resource),
        )
        .route(
            "/v1/transports/{namespace}/{name}/transactions",
            post(ingest),
        )
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(|| async { no_route() })
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

/// The two kinds of hosted resource, as the routes name them.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Transports,
    Connections,
}

impl Kind {
    fn singular(self) -> &'static str {
        match self {
            Kind::Transports => "transport",
            Kind::Connections => "connection",
        }
    }
}

type ResourcePath = Result<Path<(Kind, String, String)>, PathRejection>;

/// The kind and `namespace/name` of a resource route; an unknown kind is no route at all.
fn resource(path: ResourcePath) -> Result<(Kind, String), ApiError> {
    let Path((kind, namespace, name)) = path.map_err(|_| no_route())?;
    Ok((kind, key(&namespace, &name)))
}

fn no_route() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

fn not_hosted(kind: Kind, key: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no {} {key} is hosted here", kind.singular()),
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

fn report(kind: Kind, worker: &Worker, key: &str) -> Option<Response> {
    match kind {
        Kind::Transports => worker
            .transport(key)
            .map(|r| Json(r.report()).into_response()),
        Kind::Connections => worker
            .connection(key)
            .map(|r| Json(r.report()).into_response()),
    }
}

/// Create or update a hosted resource: 201 when created, 200 when updated, with its report.
async fn put_resource(
    State(app): State<App>,
    path: ResourcePath,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    admin(&app, &headers)?;
    let (kind, key) = resource(path)?;
    let doc = manifest(body).await?;
    let (body, created) = match kind {
        Kind::Transports => {
            let (runtime, created) = app.worker.apply_transport(&doc, Some(&key)).await?;
            (Json(runtime.report()).into_response(), created)
        }
        Kind::Connections => {
            let (runtime, created) = app.worker.apply_connection(&doc, Some(&key)).await?;
            (Json(runtime.report()).into_response(), created)
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, body).into_response())
}

async fn get_resource(State(app): State<App>, path: ResourcePath, headers: HeaderMap) -> Answer {
    admin(&app, &headers)?;
    let (kind, key) = resource(path)?;
    report(kind, &app.worker, &key).ok_or_else(|| not_hosted(kind, &key))
}

/// Stop hosting a resource; what it keeps on disk stays.
async fn delete_resource(State(app): State<App>, path: ResourcePath, headers: HeaderMap) -> Answer {
    admin(&app, &headers)?;
    let (kind, key) = resource(path)?;
    let (removed, kept) = match kind {
        Kind::Transports => (
            app.worker.remove_transport(&key).await?,
            "its queue is kept",
        ),
        Kind::Connections => (
            app.worker.remove_connection(&key).await?,
            "its watermarks are kept",
        ),
    };
    if !removed {
        return Err(not_hosted(kind, &key));
    }
    let message = format!("{} {key} is no longer hosted; {kept}", kind.singular());
    Ok(Json(json!({ "message": message })).into_response())
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
    let runtime = app
        .worker
        .transport(&key)
        .ok_or_else(|| not_hosted(Kind::Transports, &key))?;
    let limit = runtime.max_transaction_bytes() as usize;
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
