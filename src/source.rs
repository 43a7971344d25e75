//! `ferry source`: a sample source for connections. It serves a small set of orders, changes
//! one of them every few seconds, and answers `GET /records?updatedSince=W` with the orders
//! whose `updatedAt` (milliseconds since the epoch) is at or after W, oldest first, a page at
//! a time with `Link: <...>; rel="next"` when there is more. Started with `--hold`, it answers
//! no `/records` request until `POST /release`: a source that takes its time, to watch a
//! connection's startup while it lasts.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::IntoResponse,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    id: u32,
    item: String,
    quantity: u32,
    updated_at: u64,
}

#[derive(Clone)]
struct Source {
    orders: Arc<Mutex<Vec<Order>>>,
    page_size: usize,
    /// `true` once answers flow; a held source starts `false` until `POST /release`.
    released: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    updated_since: Option<u64>,
    #[serde(default)]
    page: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const ITEMS: [&str; 5] = ["bolts", "nuts", "washers", "screws", "rivets"];

async fn records(State(source): State<Source>, Query(params): Query<Params>) -> impl IntoResponse {
    // Never fails: the sender lives in the state this handler holds.
    let _ = source
        .released
        .subscribe()
        .wait_for(|released| *released)
        .await;
    let since = params.updated_since.unwrap_or(0);
    let mut changed: Vec<Order> = source
        .orders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|o| o.updated_at >= since)
        .cloned()
        .collect();
    changed.sort_by_key(|o| (o.updated_at, o.id));
    let start = params.page * source.page_size;
    let page: Vec<Order> = changed
        .iter()
        .skip(start)
        .take(source.page_size)
        .cloned()
        .collect();
    let mut headers = HeaderMap::new();
    if start + source.page_size < changed.len() {
        let next = format!(
            "</records?updatedSince={since}&page={}>; rel=\"next\"",
            params.page + 1
        );
        if let Ok(value) = HeaderValue::from_str(&next) {
            headers.insert(header::LINK, value);
        }
    }
    (headers, Json(serde_json::json!({ "items": page })))
}

async fn release(State(source): State<Source>) -> &'static str {
    source.released.send_replace(true);
    "released"
}

pub fn router(orders: usize, page_size: usize, hold: bool) -> (Router, Arc<Mutex<Vec<Order>>>) {
    let now = now_ms();
    let orders: Vec<Order> = (0..orders as u32)
        .map(|id| Order {
            id,
            item: ITEMS[id as usize % ITEMS.len()].into(),
            quantity: 1,
            updated_at: now,
        })
        .collect();
    let orders = Arc::new(Mutex::new(orders));
    let source = Source {
        orders: orders.clone(),
        page_size: page_size.max(1),
        released: Arc::new(tokio::sync::watch::Sender::new(!hold)),
    };
    let router = Router::new()
        .route("/records", get(records))
        .route("/release", post(release))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(source);
    (router, orders)
}

pub async fn serve(
    listen: SocketAddr,
    orders: usize,
    change_every: Duration,
    page_size: usize,
    hold: bool,
) -> std::io::Result<()> {
    let (router, state) = router(orders, page_size, hold);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "ferry source listening on http://{}/records: {orders} orders, one changes every {change_every:?}{}",
        listener.local_addr()?,
        if hold {
            "; answers held until POST /release"
        } else {
            ""
        }
    );
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            tokio::time::sleep(change_every).await;
            let mut orders = state.lock().unwrap_or_else(|e| e.into_inner());
            if orders.is_empty() {
                continue;
            }
            let i = next % orders.len();
            next += 1;
            let order = &mut orders[i];
            order.quantity += 1;
            order.updated_at = now_ms();
            println!("order {} changed: quantity {}", order.id, order.quantity);
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
}

/// `ferry source`'s arguments.
#[derive(clap::Args)]
pub struct SourceArgs {
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// How many orders it serves.
    #[arg(long, default_value_t = 10)]
    pub orders: usize,
    /// How often one of them changes.
    #[arg(long, default_value = "3s")]
    pub change_every: crate::api::duration::Duration,
    /// Records per page (more are linked with rel="next").
    #[arg(long, default_value_t = 50)]
    pub page_size: usize,
    /// Answer no request for records until `POST /release` (a source that takes its time).
    #[arg(long)]
    pub hold: bool,
}

impl SourceArgs {
    /// Serve until a signal; a failure names the address.
    pub async fn run(self) -> Result<(), String> {
        let listen = self.listen;
        serve(
            listen,
            self.orders,
            self.change_every.as_std(),
            self.page_size,
            self.hold,
        )
        .await
        .map_err(|e| format!("source on {listen}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serving(hold: bool) -> String {
        crate::install_crypto_provider(); // as the binary does first
        let (router, _) = router(3, 50, hold);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    #[tokio::test]
    async fn a_held_source_answers_once_released() {
        let url = serving(true).await;
        let http = reqwest::Client::new();
        let pending = tokio::spawn({
            let http = http.clone();
            let url = url.clone();
            async move { http.get(format!("{url}/records")).send().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished(), "a held source answers nothing");
        let released = http
            .post(format!("{url}/release"))
            .send()
            .await
            .expect("release");
        assert!(released.status().is_success());
        let answer = pending.await.expect("task").expect("answer");
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(3));
    }

    #[tokio::test]
    async fn a_source_not_held_answers_at_once() {
        let url = serving(false).await;
        let body: serde_json::Value = reqwest::get(format!("{url}/records?updatedSince=0"))
            .await
            .expect("answer")
            .json()
            .await
            .expect("JSON");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(3));
    }
}
