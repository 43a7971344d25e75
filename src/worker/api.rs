//! The worker's HTTP API (docs/worker-api.md).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, to_bytes},
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::{
    Worker, WorkerError,
    budget::{BudgetError, Reservation},
    hosted::{ForEachKind, HostedRuntime},
    metrics,
    tokens::{TokenHash, Tokens, allowed},
};
use crate::store::{self, NewTxn, now_ms};
use crate::transport::runtime::TransportRuntime;
use crate::wire::{
    self, DEFAULT_QUEUE_LISTING, Kind, MAX_QUEUE_LISTING, Outcome, QueueListing, QueuedSummary, key,
};

/// The largest manifest a PUT takes: what the API server takes for an object (3 MiB).
const MAX_MANIFEST: usize = 3 << 20;
const MAX_ID_LEN: usize = 128;
const MAX_CONTENT_TYPE_LEN: usize = 256;
/// A body that sends nothing for this long is answered 408 and its connection closed.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
        let mut response = (self.0, Json(json!({"message": self.1}))).into_response();
        // Only refusals are answered 503 by ApiError (a failed transaction carries its own
        // body): the producer may retry the same transaction shortly.
        let headers = response.headers_mut();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        // These may answer before the body was read: the connection cannot carry another
        // request, and saying so keeps clients from reusing it.
        if matches!(
            self.0,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::REQUEST_TIMEOUT
        ) {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let status = match &e {
            WorkerError::Invalid(_)
            | WorkerError::WrongKind { .. }
            | WorkerError::NameMismatch { .. }
            | WorkerError::Resolved(_) => StatusCode::BAD_REQUEST,
            WorkerError::Runtime {
                source: crate::transport::runtime::RuntimeError::Host(host),
                ..
            } if host.is_in_spec() => StatusCode::BAD_REQUEST,
            // The queue's server (JetStream) is unavailable now: try again (T11).
            WorkerError::Store(store)
            | WorkerError::Runtime {
                source: crate::transport::runtime::RuntimeError::Store(store),
                ..
            } if store.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            WorkerError::Runtime { .. }
            | WorkerError::Connection { .. }
            | WorkerError::SavedSpec { .. }
            | WorkerError::Record(_)
            | WorkerError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

pub fn router(worker: Arc<Worker>, tokens: Tokens) -> Router {
    routes(app(worker, tokens))
}

fn app(worker: Arc<Worker>, tokens: Tokens) -> App {
    let registry = Arc::new(metrics::registry(worker.clone()));
    App {
        worker,
        tokens,
        registry,
    }
}

/// The worker's HTTP service as the server runs it: a transaction POST goes straight to
/// `ingest` — the hot path of what is in effect a reverse proxy, so no routing and no copies
/// of the headers for extractors — and every other request through the router, which also
/// routes ingest (the same handler) for anything the fast path does not recognise.
#[derive(Clone)]
pub struct WorkerService {
    app: App,
    router: hyper_util::service::TowerToHyperService<Router>,
}

pub fn service(worker: Arc<Worker>, tokens: Tokens) -> WorkerService {
    let app = app(worker, tokens);
    WorkerService {
        router: hyper_util::service::TowerToHyperService::new(routes(app.clone())),
        app,
    }
}

/// `(namespace, name)` of `POST /v1/transports/{namespace}/{name}/transactions`, when the path
/// needs no decoding; anything else is the router's.
fn ingest_path<B>(request: &http::Request<B>) -> Option<(String, String)> {
    if request.method() != http::Method::POST {
        return None;
    }
    let rest = request.uri().path().strip_prefix("/v1/transports/")?;
    let rest = rest.strip_suffix("/transactions")?;
    let (namespace, name) = rest.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    (plain(namespace) && plain(name)).then(|| (namespace.to_owned(), name.to_owned()))
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WorkerService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let Some((namespace, name)) = ingest_path(&request) else {
            return Box::pin(self.router.call(request));
        };
        let app = self.app.clone();
        let (parts, body) = request.into_parts();
        Box::pin(async move {
            Ok(
                ingest_transaction(&app, &namespace, &name, &parts.headers, Body::new(body))
                    .await
                    .into_response(),
            )
        })
    }
}

/// `PUT`, `GET` and `DELETE` of `/v1/{kind}/{namespace}/{name}` for one kind, and the list of
/// what it hosts of the kind (`GET /v1/{kind}`).
fn resource_routes<R: HostedRuntime>(router: Router<App>) -> Router<App> {
    router
        .route(
            &wire::resource_path(R::KIND, "{namespace}/{name}"),
            put(put_resource::<R>)
                .get(get_resource::<R>)
                .delete(delete_resource::<R>),
        )
        .route(&wire::hosted_path(R::KIND), get(list_resources::<R>))
}

/// The keys of every hosted resource of kind `R` (the operator's sweep of a pool's workers).
async fn list_resources<R: HostedRuntime>(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers)?;
    let mut items: Vec<String> = app
        .worker
        .all::<R>()
        .iter()
        .map(|r| r.key().to_owned())
        .collect();
    items.sort();
    Ok(Json(wire::HostedList { items }).into_response())
}

/// Every kind's resource routes.
struct ResourceRoutes(Router<App>);

impl ForEachKind for ResourceRoutes {
    fn kind<R: HostedRuntime>(self) -> Self {
        Self(resource_routes::<R>(self.0))
    }
}

fn routes(app: App) -> Router {
    super::kinds::each(ResourceRoutes(Router::new()))
        .0
        .route(&wire::transactions_path("{namespace}/{name}"), post(ingest))
        .route(&wire::queue_path("{namespace}/{name}"), get(queue))
        .route(wire::METRICS, get(serve_metrics))
        .route(wire::HEALTHZ, get(|| async { "ok" }))
        .route(wire::READYZ, get(|| async { "ok" }))
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

type ResourcePath = Result<Path<(String, String)>, PathRejection>;

/// The `namespace/name` of a resource route, once the admin token was checked.
fn admin_resource(app: &App, headers: &HeaderMap, path: ResourcePath) -> Result<String, ApiError> {
    admin(app, headers)?;
    let Path((namespace, name)) = path.map_err(|_| no_route())?;
    Ok(key(&namespace, &name))
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

/// The JSON body of a PUT: at most [`MAX_MANIFEST`] bytes, refused at once when its
/// Content-Length says more.
async fn manifest(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a manifest may be at most {MAX_MANIFEST} bytes (as on the API server)"),
        )
    };
    if declared_length(headers)?.is_some_and(|n| n > MAX_MANIFEST as u64) {
        return Err(too_large());
    }
    let body = tokio::time::timeout(BODY_IDLE_TIMEOUT, to_bytes(body, MAX_MANIFEST))
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {}s",
                    BODY_IDLE_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|_| too_large())?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

/// Create or update a hosted resource: 201 when created, 200 when updated, with its report.
async fn put_resource<R: HostedRuntime>(
    State(app): State<App>,
    path: ResourcePath,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let key = admin_resource(&app, &headers, path)?;
    let mut doc = manifest(&headers, body).await?;
    // Its own ingest token, before it is hosted: no moment takes the worker's token for it.
    if let Some(hash) = own_ingest_token::<R>(&mut doc)? {
        app.worker.set_ingest_token(&key, hash).await?;
    }
    let restart = restart_value(&mut doc)?;
    let (runtime, created) = app.worker.apply::<R>(&doc, Some(&key)).await?;
    // After the update: the runtime starts again with what this PUT gave it.
    if let Some(value) = restart {
        runtime.restart(value, created).await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(runtime.report())).into_response())
}

/// The `ingestTokenSha256` beside a transport's spec, taken out of the manifest.
fn own_ingest_token<R: HostedRuntime>(doc: &mut Value) -> Result<Option<TokenHash>, ApiError> {
    let Some(given) = doc
        .as_object_mut()
        .and_then(|map| map.remove(wire::INGEST_TOKEN_SHA256))
    else {
        return Ok(None);
    };
    if R::KIND != Kind::Transports {
        return Err(bad_request(format!(
            "{}: only a transport takes transactions",
            wire::INGEST_TOKEN_SHA256
        )));
    }
    given
        .as_str()
        .and_then(|hex| TokenHash::from_hex(hex).ok())
        .map(Some)
        .ok_or_else(|| bad_request(super::tokens::NotAHash.to_string()))
}

/// The `restart` value beside the spec, taken out of the manifest: a string of at most
/// [`wire::MAX_RESTART_VALUE`] bytes.
fn restart_value(doc: &mut Value) -> Result<Option<String>, ApiError> {
    let Some(given) = doc
        .as_object_mut()
        .and_then(|map| map.remove(wire::RESTART))
    else {
        return Ok(None);
    };
    match given {
        Value::String(value) if !value.is_empty() && value.len() <= wire::MAX_RESTART_VALUE => {
            Ok(Some(value))
        }
        _ => Err(bad_request(format!(
            "{}: must be a string of 1 to {} bytes",
            wire::RESTART,
            wire::MAX_RESTART_VALUE
        ))),
    }
}

/// `?changedFrom=<etag>&wait=<s>&settle=<s>`: a long poll (see `wire::CHANGED_FROM`).
#[derive(serde::Deserialize)]
struct ChangedFrom {
    #[serde(rename = "changedFrom")]
    changed_from: Option<String>,
    wait: Option<u64>,
    settle: Option<u64>,
}

/// How often a long poll looks at the report again (in memory: no I/O).
const LONG_POLL_LOOK: std::time::Duration = std::time::Duration::from_millis(200);

/// The report with its `ETag`; with `changedFrom`, a long poll for a change of it.
async fn get_resource<R: HostedRuntime>(
    State(app): State<App>,
    path: ResourcePath,
    query: Result<axum::extract::Query<ChangedFrom>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Answer {
    let key = admin_resource(&app, &headers, path)?;
    let runtime = hosted::<R>(&app.worker, &key)?;
    let query = query
        .map_err(|_| {
            bad_request(format!(
                "changedFrom is an ETag of this report; wait and settle are seconds from 0 to {}",
                wire::MAX_WAIT_SECONDS
            ))
        })?
        .0;
    let seconds = |s: Option<u64>, default: u64| {
        std::time::Duration::from_secs(s.unwrap_or(default).min(wire::MAX_WAIT_SECONDS))
    };
    let (wait, settle) = (
        seconds(query.wait, wire::DEFAULT_WAIT_SECONDS),
        seconds(query.settle, 0),
    );
    let started = tokio::time::Instant::now();
    loop {
        let report = runtime.report();
        let etag = wire::Marked::etag(&report);
        let Some(known) = &query.changed_from else {
            return Ok(with_etag(Json(report).into_response(), &etag));
        };
        let changed = wire::significant_mark(&etag) != wire::significant_mark(known)
            || (etag != *known && started.elapsed() >= settle);
        if changed {
            return Ok(with_etag(Json(report).into_response(), &etag));
        }
        if started.elapsed() >= wait {
            return Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), known));
        }
        tokio::select! {
            () = tokio::time::sleep(LONG_POLL_LOOK) => {}
            // A stopping worker answers what it has: the caller asks again elsewhere.
            () = app.worker.stopping() => {
                return Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), known));
            }
        }
    }
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = header::HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[derive(serde::Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: crate::wire::Purge,
}

/// Stop hosting a resource; what it keeps on disk stays, unless `?purge=true` (a resource
/// deleted with `reclaimPolicy: Delete`), which removes it also when it is hosted no more, or
/// `?purge=reclaimPolicy` (its own spec decides).
async fn delete_resource<R: HostedRuntime>(
    State(app): State<App>,
    path: ResourcePath,
    query: Result<axum::extract::Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Answer {
    let key = admin_resource(&app, &headers, path)?;
    let purge = match query {
        Ok(q) => q.0.purge,
        Err(_) => {
            return Err(bad_request(
                "purge: must be true, false or reclaimPolicy".into(),
            ));
        }
    };
    let removed = app.worker.remove::<R>(&key, purge).await?;
    let kind = R::KIND.singular();
    let message = match (removed.hosted, removed.purged) {
        (false, false) => return Err(not_hosted(R::KIND, &key)),
        (true, false) if !removed.purging => {
            format!("{kind} {key} is no longer hosted; {}", R::KEPT)
        }
        (true, _) => format!("{kind} {key} is no longer hosted; {}", R::PURGED),
        (false, true) => format!("no {kind} {key} is hosted here; {}", R::PURGED),
    };
    Ok(Json(json!({ "message": message })).into_response())
}

/// The hosted resource of kind `R` at `key`, or 404.
fn hosted<R: HostedRuntime>(worker: &Worker, key: &str) -> Result<Arc<R>, ApiError> {
    worker.get::<R>(key).ok_or_else(|| not_hosted(R::KIND, key))
}

#[derive(serde::Deserialize)]
struct QueueQuery {
    limit: Option<usize>,
}

/// `GET /v1/transports/{ns}/{name}/queue?limit=N` (admin): the queue's numbers and its oldest
/// transactions' ids, sizes and ages, never their payloads.
async fn queue(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    query: Result<axum::extract::Query<QueueQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Answer {
    admin(&app, &headers)?;
    let limit = match query {
        Ok(q) => q.0.limit.unwrap_or(DEFAULT_QUEUE_LISTING),
        Err(_) => {
            return Err(bad_request(format!(
                "limit: must be a number from 0 to {MAX_QUEUE_LISTING}"
            )));
        }
    };
    if limit > MAX_QUEUE_LISTING {
        return Err(bad_request(format!(
            "limit: {limit} is more than {MAX_QUEUE_LISTING}"
        )));
    }
    let key = key(&namespace, &name);
    let runtime = hosted::<TransportRuntime>(&app.worker, &key)?;
    let report = runtime.report();
    let now = now_ms();
    let oldest = runtime
        .oldest_queued(limit)
        .await
        .map_err(WorkerError::from)?
        .into_iter()
        .map(|e| QueuedSummary {
            age_seconds: now.saturating_sub(e.received_ms) / 1000,
            id: e.id,
            bytes: e.bytes,
            content_type: e.content_type,
            received_ms: e.received_ms,
        })
        .collect();
    Ok(Json(QueueListing {
        transport: key,
        state: report.state,
        messages: report.queue.messages,
        bytes: report.queue.bytes,
        oldest_age_seconds: report.queue.oldest_age_seconds,
        oldest,
    })
    .into_response())
}

async fn ingest(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    ingest_transaction(&app, &namespace, &name, &headers, body).await
}

async fn ingest_transaction(
    app: &App,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Answer {
    let key = key(namespace, name);
    // A transport with a token of its own takes only that one; the others the worker's (none on
    // a pool's worker).
    if !app
        .tokens
        .ingest_allowed(app.worker.ingest_token(&key), headers)
    {
        return Err(unauthorized("ingest"));
    }
    let runtime = hosted::<TransportRuntime>(&app.worker, &key)?;
    let id = match headers.get(wire::TRANSACTION_ID_HEADER) {
        Some(v) => v
            .to_str()
            .ok()
            .filter(|id| valid_id(id))
            .ok_or_else(|| {
                bad_request(format!(
                    "Ferry-Transaction-Id must be 1 to {MAX_ID_LEN} visible ASCII characters"
                ))
            })?
            .to_owned(),
        None => new_transaction_id(),
    };
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|ct| ct.len() <= MAX_CONTENT_TYPE_LEN)
                .ok_or_else(|| {
                    bad_request(format!(
                        "Content-Type must be at most {MAX_CONTENT_TYPE_LEN} visible ASCII characters"
                    ))
                })?
                .to_owned(),
        ),
        None => None,
    };
    let limit = runtime.max_transaction_bytes();
    let declared = declared_length(headers)?;
    // Counted to this transport, whose fair share is the budget over the transports hosted.
    let reservation = app
        .worker
        .budget()
        .empty(&key, app.worker.hosted_count::<TransportRuntime>());
    let read = read_transaction(
        body,
        declared,
        limit,
        &key,
        reservation,
        &id,
        content_type.as_deref(),
    );
    // A body still arriving when the worker stops is refused: nothing of it was received.
    let txn = tokio::select! {
        read = read => read?,
        () = app.worker.stopping() => return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker is shutting down; send the transaction again".into(),
        )),
    };
    // The transaction is received: it runs to its outcome in a task of its own, so a producer
    // that hangs up now cannot leave it half-done and outside the totals.
    let (txn, reservation) = txn;
    let ingesting = runtime.clone();
    let result = tokio::spawn(async move {
        let result = ingesting.ingest(id, content_type, txn).await;
        drop(reservation);
        result
    })
    .await
    .map_err(|e| {
        // A panic is this transport's alone: counted to it, the worker and the others go on.
        let message = format!("the ingest task ended without an answer: {e}");
        if let Ok(payload) = e.try_into_panic() {
            runtime.panicked("ingest", payload.as_ref());
        }
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, message)
    })?;
    let status = match result.outcome {
        Outcome::Delivered => StatusCode::OK,
        Outcome::Stored => StatusCode::ACCEPTED,
        Outcome::Failed => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = (status, Json(result)).into_response();
    // A failed transaction may be sent again (suspended, the host or the queue unavailable,
    // the transport moved): say when.
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// A time-ordered UUID (version 7): the time prefix orders ids, 74 random bits keep them
/// apart; drawn from a thread-local generator, not a syscall per transaction.
fn new_transaction_id() -> String {
    let random = fastrand::u128(..).to_le_bytes();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    uuid::Builder::from_unix_timestamp_millis(now_ms(), &bytes)
        .into_uuid()
        .to_string()
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

/// The Content-Length header, when there is one.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad_request("Content-Length is not a number".into()))
        })
        .transpose()
}

/// Read an ingest body straight into its queued form (one copy of the payload), under the
/// transport's size limit and its `reservation` of the worker's memory budget, each frame within
/// [`BODY_IDLE_TIMEOUT`]. Over the budget the producer hears 503 with `Retry-After` before
/// anything is received.
async fn read_transaction(
    mut body: Body,
    declared: Option<u64>,
    limit: u64,
    key: &str,
    mut reservation: Reservation,
    id: &str,
    content_type: Option<&str>,
) -> Result<(NewTxn, Reservation), ApiError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the transaction is larger than maxTransactionBytes ({limit} bytes) of transport {key}"
            ),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    reservation
        .grow(declared.unwrap_or(0))
        .map_err(over_budget)?;
    let header_len = store::header_len(id, content_type);
    let capacity = header_len + declared.unwrap_or(0) as usize;
    let mut encoded = Vec::with_capacity(capacity);
    store::encode_header(now_ms(), id, content_type, &mut encoded);
    loop {
        let frame = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "no byte of the body arrived for {}s",
                        BODY_IDLE_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| bad_request(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let size = (encoded.len() - header_len + data.len()) as u64;
        if size > limit {
            return Err(too_large());
        }
        let more = size.saturating_sub(reservation.bytes());
        reservation.grow(more).map_err(over_budget)?;
        encoded.extend_from_slice(&data);
    }
    Ok((
        NewTxn::from_encoded(encoded.into(), header_len),
        reservation,
    ))
}

fn over_budget(e: BudgetError) -> ApiError {
    match e {
        BudgetError::LargerThanBudget { .. } => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        BudgetError::Exhausted { .. } | BudgetError::OverFairShare { .. } => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
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
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(method: &str, path: &str) -> Option<(String, String)> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        ingest_path(&request)
    }

    async fn open_worker(dir: &std::path::Path) -> Arc<Worker> {
        Worker::open(
            super::super::WorkerOptions {
                data_dir: dir.to_owned(),
                public_url: "http://127.0.0.1:1".into(),
                forward_window: 1,
                memory_budget: 1 << 20,
                jetstream: None,
            },
            false,
        )
        .await
        .unwrap()
    }

    /// The long poll: the report's ETag given back is answered 304 after `wait` when nothing
    /// changed, and at once with the new report when its state changes.
    #[tokio::test]
    async fn a_long_poll_answers_a_change_of_state_at_once_and_304_when_nothing_changes() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let worker = open_worker(dir.path()).await;
        let manifest = |suspended: bool| {
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                "metadata": {"name": "erp", "namespace": "plant-a"},
                "spec": {"host": {"url": "http://127.0.0.1:9/ingest"}, "suspended": suspended}})
        };
        worker
            .apply::<TransportRuntime>(&manifest(false), Some("plant-a/erp"))
            .await
            .unwrap();
        let app = router(worker.clone(), Tokens::default());
        let get = |query: String| {
            let app = app.clone();
            async move {
                let answer = app
                    .oneshot(
                        http::Request::get(format!("/v1/transports/plant-a/erp{query}"))
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let etag = answer
                    .headers()
                    .get(header::ETAG)
                    .map(|e| e.to_str().unwrap().trim_matches('"').to_owned())
                    .unwrap_or_default();
                (answer.status(), etag)
            }
        };
        let (status, etag) = get(String::new()).await;
        assert_eq!(status, StatusCode::OK);
        let (status, same) = get(format!("?changedFrom={etag}&wait=1")).await;
        assert_eq!(
            (status, same.as_str()),
            (StatusCode::NOT_MODIFIED, etag.as_str())
        );
        let waiting = tokio::spawn(get(format!("?changedFrom={etag}&wait=30")));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        worker
            .apply::<TransportRuntime>(&manifest(true), Some("plant-a/erp"))
            .await
            .unwrap();
        let (status, changed) = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("answered at once, not after wait")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_ne!(
            wire::significant_mark(&changed),
            wire::significant_mark(&etag)
        );
        let (status, _) = get(format!("?changedFrom={etag}&wait=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn metrics_are_labelled_openmetrics() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let worker = open_worker(dir.path()).await;
        let answer = router(worker, Tokens::default())
            .oneshot(
                http::Request::get(wire::METRICS)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    /// The fast path takes exactly the transaction POSTs it can read without decoding; the
    /// router, with the same handler, takes everything else.
    #[test]
    fn the_fast_path_recognises_only_plain_transaction_posts() {
        let plain = Some(("plant-a".to_string(), "erp".to_string()));
        assert_eq!(
            path_of("POST", "/v1/transports/plant-a/erp/transactions"),
            plain
        );
        assert_eq!(
            path_of("POST", "/v1/transports/plant-a/erp/transactions?x=1"),
            plain
        );
        for (method, path) in [
            ("GET", "/v1/transports/plant-a/erp/transactions"),
            ("POST", "/v1/transports/plant-a/erp"),
            ("POST", "/v1/transports/plant%2Da/erp/transactions"),
            ("POST", "/v1/transports/plant-a/a/b/transactions"),
            ("POST", "/v1/transports//erp/transactions"),
            ("POST", "/v1/connections/plant-a/erp/transactions"),
        ] {
            assert_eq!(path_of(method, path), None, "{method} {path}");
        }
    }
}
