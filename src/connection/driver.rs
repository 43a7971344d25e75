//! Sources and targets behind two small traits, so more can be added: the HTTP source of
//! docs/connection.md (W2), and the `transport` and `http` targets (W3).

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Client, Url, header};
use serde_json::Value;

use super::watermark::{SourceRecord, Watermark};
use crate::api::connection::{HttpMethod, HttpSource, HttpTarget};
use crate::wire;

/// Most pages one fetch follows (a source that links to itself must not loop forever).
const MAX_PAGES: usize = 1000;
/// The largest page body read from a source; a larger one is refused.
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// A fetch stops following `next` links once it holds this many records or page bytes; the
/// held records are sent and the next iteration asks from the new watermark (see
/// `Fetched::complete`).
pub const MAX_HELD_RECORDS: usize = 10_000;
pub const MAX_HELD_BYTES: usize = 16 << 20;
/// Redirects followed for one request (to the same origin only).
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Target(String),
}

/// What one fetch read.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<SourceRecord>,
    /// False when the fetch stopped at the cap on records held with more pages to go.
    pub complete: bool,
}

/// Reads the records changed since a watermark.
pub trait Source: Send + Sync {
    fn fetch<'a>(
        &'a self,
        since: Option<&'a Watermark>,
    ) -> BoxFuture<'a, Result<Fetched, DriverError>>;
}

/// Takes one record; `Ok` means accepted.
pub trait Target: Send + Sync {
    fn send<'a>(
        &'a self,
        key: &'a str,
        record: &'a SourceRecord,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
}

/// One HTTP client for every connection's drivers: a client holds a connection pool and a TLS
/// configuration, and one per driver cost a worker with 100 connections ~24 MiB. Timeouts are
/// set per request. Built again when the CA bundle it trusts is renewed (`crate::trust`).
fn client() -> Result<Client, String> {
    static SHARED: std::sync::Mutex<Option<(u64, Client)>> = std::sync::Mutex::new(None);
    let generation = crate::trust::generation();
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((built_for, client)) = shared.as_ref()
        && *built_for == generation
    {
        return Ok(client.clone());
    }
    // reqwest panics when no TLS provider is installed yet.
    crate::install_crypto_provider();
    let client = Client::builder()
        .redirect(same_origin_redirects())
        // A name that resolves to a forbidden address is not connected to.
        .dns_resolver(std::sync::Arc::new(crate::destinations::GuardedResolver))
        .pool_idle_timeout(Duration::from_secs(30))
        // The operator's CA, for targets that are ferry workers (`--ca-file`).
        .tls_certs_merge(crate::trust::extra_roots())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    *shared = Some((generation, client.clone()));
    Ok(client)
}

/// A URL whose host is a literal address this process may not reach is refused at once
/// (names are checked when they are resolved, by the client's resolver). Pages and redirects
/// stay within the URL's origin, so they reach no other address.
fn allowed(field: &str, url: &Url) -> Result<(), String> {
    match crate::destinations::for_process().literal(url) {
        Some(refusal) => Err(format!("{field}: {refusal}")),
        None => Ok(()),
    }
}

/// Redirects are followed only within the origin (scheme, host, port) of the URL the request
/// was made to: a source or target cannot send ferry's requests, and the tokens they carry, to
/// another host.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        if first.origin() != attempt.url().origin() {
            let refusal = format!(
                "a redirect to {} leaves the origin of {first}; ferry follows redirects only within one origin",
                attempt.url()
            );
            return attempt.error(refusal);
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

pub struct HttpSourceDriver {
    client: Client,
    timeout: Duration,
    config: HttpSource,
}

impl HttpSourceDriver {
    pub fn new(config: &HttpSource, timeout: Duration) -> Result<Self, String> {
        let url = Url::parse(&config.url)
            .map_err(|e| format!("source.http.url {:?}: {e}", config.url))?;
        allowed("source.http.url", &url)?;
        Ok(Self {
            client: client()?,
            timeout,
            config: config.clone(),
        })
    }

    /// The records of one page, its size in bytes, and the next page's URL when the source
    /// says there is more (an RFC 8288 `Link: <...>; rel="next"` header).
    async fn page(&self, url: Url) -> Result<(Vec<SourceRecord>, usize, Option<Url>), DriverError> {
        let fail = |m: String| DriverError::Source(format!("source {url}: {m}"));
        let mut response = self
            .client
            .get(url.clone())
            .timeout(self.timeout)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(crate::error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("answered {status}")));
        }
        let next = next_link(&url, response.headers().get_all(header::LINK));
        if let Some(next) = &next
            && next.origin() != url.origin()
        {
            return Err(fail(format!(
                "its next link {next} leaves the source's origin; ferry follows next links only within one origin"
            )));
        }
        let too_large = || {
            fail(format!(
                "the page is larger than {MAX_PAGE_BYTES} bytes, the most ferry reads of one page; ask the source for smaller pages"
            ))
        };
        let body = crate::read_capped(&mut response, MAX_PAGE_BYTES)
            .await
            .map_err(|e| fail(crate::error_chain(&e)))?
            .ok_or_else(too_large)?;
        let size = body.len();
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("the body is not JSON: {e}")))?;
        let records = extract(body, &self.config).map_err(fail)?;
        Ok((records, size, next))
    }
}

impl Source for HttpSourceDriver {
    fn fetch<'a>(
        &'a self,
        since: Option<&'a Watermark>,
    ) -> BoxFuture<'a, Result<Fetched, DriverError>> {
        Box::pin(async move {
            let mut url =
                Url::parse(&self.config.url).map_err(|e| DriverError::Source(e.to_string()))?;
            if let Some(since) = since {
                url.query_pairs_mut()
                    .append_pair(&self.config.watermark_param, &since.as_param());
            }
            let mut fetched = Fetched::default();
            let mut held_bytes = 0;
            let mut next = Some(url);
            let mut pages = 0;
            while let Some(url) = next.take() {
                if fetched.records.len() >= MAX_HELD_RECORDS || held_bytes >= MAX_HELD_BYTES {
                    tracing::info!(source = %self.config.url, records = fetched.records.len(),
                        bytes = held_bytes, "holding as many records as one fetch may; sending them before reading further pages");
                    return Ok(fetched);
                }
                pages += 1;
                if pages > MAX_PAGES {
                    return Err(DriverError::Source(format!(
                        "the source links more than {MAX_PAGES} pages"
                    )));
                }
                let (page, size, following) = self.page(url).await?;
                fetched.records.extend(page);
                held_bytes += size;
                next = following;
            }
            fetched.complete = true;
            Ok(fetched)
        })
    }
}

/// The URL of `rel="next"` in the Link headers, resolved against the page's URL.
fn next_link<'a>(
    base: &Url,
    values: impl IntoIterator<Item = &'a header::HeaderValue>,
) -> Option<Url> {
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        for link in text.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let is_next = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                let target = target.trim_start_matches('<').trim_end_matches('>');
                return base.join(target).ok();
            }
        }
    }
    None
}

/// The records in a source's JSON body, by the configured pointers. The items are moved out
/// of the body, not copied.
pub fn extract(mut body: Value, config: &HttpSource) -> Result<Vec<SourceRecord>, String> {
    let items = body
        .pointer_mut(&config.items_pointer)
        .ok_or_else(|| format!("nothing at itemsPointer {:?}", config.items_pointer))?
        .as_array_mut()
        .map(std::mem::take)
        .ok_or_else(|| {
            format!(
                "the value at itemsPointer {:?} is not an array",
                config.items_pointer
            )
        })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let id = match item.pointer(&config.id_pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(format!(
                        "record {i} has no string or number at idPointer {:?}",
                        config.id_pointer
                    ));
                }
            };
            let watermark = item
                .pointer(&config.watermark_pointer)
                .ok_or_else(|| {
                    format!(
                        "record {id} has nothing at watermarkPointer {:?}",
                        config.watermark_pointer
                    )
                })
                .and_then(|v| Watermark::from_json(v).map_err(|e| format!("record {id}: {e}")))?;
            Ok(SourceRecord {
                id,
                watermark,
                body: item,
            })
        })
        .collect()
}

/// The transaction id a record travels under: the same record at the same watermark always
/// gets the same id, so a host can drop the duplicates at-least-once delivery may bring.
pub fn transaction_id(key: &str, record: &SourceRecord) -> String {
    let text = format!("{key}/{}@{}", record.id, record.watermark.as_param());
    let clean: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if clean.len() <= 128 {
        return clean;
    }
    // Too long for the header: keep the start and add a hash of the whole (SHA-256, so the id
    // is the same with every build of ferry and a host's duplicate check keeps working).
    format!("{}~{}", &clean[..100], crate::stable_hash_hex(&text, 8))
}

/// A Transport hosted by a worker: its ingest endpoint and token. "stored" counts as accepted.
pub struct TransportTargetDriver {
    timeout: Duration,
    name: String,
    endpoint: String,
    token: Option<String>,
}

impl TransportTargetDriver {
    pub fn new(
        name: &str,
        endpoint: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        Url::parse(endpoint)
            .map_err(|e| format!("transport {name}: endpoint {endpoint:?}: {e}"))?;
        client()?;
        Ok(Self {
            timeout,
            name: name.to_owned(),
            endpoint: endpoint.to_owned(),
            token,
        })
    }
}

impl Target for TransportTargetDriver {
    fn send<'a>(
        &'a self,
        key: &'a str,
        record: &'a SourceRecord,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let fail = |m: String| DriverError::Target(format!("transport {}: {m}", self.name));
            // The shared client of now: a renewed CA bundle is trusted from the next send.
            let mut request = client()
                .map_err(fail)?
                .post(&self.endpoint)
                .timeout(self.timeout)
                .header(wire::TRANSACTION_ID_HEADER, transaction_id(key, record))
                .json(&record.body);
            if let Some(token) = &self.token {
                request = request.header(wire::TOKEN_HEADER, token);
            }
            let response = request
                .send()
                .await
                .map_err(|e| fail(crate::error_chain(&e)))?;
            let status = response.status();
            if status.as_u16() == 200 || status.as_u16() == 202 {
                return Ok(());
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let why = body["reason"]
                .as_str()
                .or(body["message"].as_str())
                .unwrap_or("no reason given");
            Err(fail(format!("answered {status}: {why}")))
        })
    }
}

/// POST or PUT each record to a URL; 2xx accepts it.
pub struct HttpTargetDriver {
    client: Client,
    timeout: Duration,
    config: HttpTarget,
}

impl HttpTargetDriver {
    pub fn new(config: &HttpTarget, timeout: Duration) -> Result<Self, String> {
        let url = Url::parse(&config.url)
            .map_err(|e| format!("target.http.url {:?}: {e}", config.url))?;
        allowed("target.http.url", &url)?;
        Ok(Self {
            client: client()?,
            timeout,
            config: config.clone(),
        })
    }
}

impl Target for HttpTargetDriver {
    fn send<'a>(
        &'a self,
        key: &'a str,
        record: &'a SourceRecord,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let request = match self.config.method {
                HttpMethod::Post => self.client.post(&self.config.url),
                HttpMethod::Put => self.client.put(&self.config.url),
            };
            let response = request
                .timeout(self.timeout)
                .header(wire::TRANSACTION_ID_HEADER, transaction_id(key, record))
                .json(&record.body)
                .send()
                .await
                .map_err(|e| {
                    DriverError::Target(format!(
                        "target {}: {}",
                        self.config.url,
                        crate::error_chain(&e)
                    ))
                })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(DriverError::Target(format!(
                    "target {} answered {status}",
                    self.config.url
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(items: &str) -> HttpSource {
        HttpSource {
            url: "http://crm/api".into(),
            watermark_param: "updatedSince".into(),
            items_pointer: items.into(),
            watermark_pointer: "/updatedAt".into(),
            id_pointer: "/id".into(),
        }
    }

    #[test]
    fn extracts_by_pointers() {
        let body = json!({"items": [{"id": 7, "updatedAt": "t1"}, {"id": "x", "updatedAt": 5}]});
        let records = extract(body, &source("/items")).unwrap();
        assert_eq!(records[0].id, "7");
        assert_eq!(records[1].watermark, Watermark::Number(5.0));
        let bare = json!([{"id": 1, "updatedAt": "t"}]);
        assert_eq!(extract(bare, &source("")).unwrap().len(), 1);
        let err = extract(json!({"items": [{"id": 1}]}), &source("/items")).unwrap_err();
        assert!(
            err.contains("record 1 has nothing at watermarkPointer"),
            "{err}"
        );
        assert!(extract(json!({"items": 3}), &source("/items")).is_err());
    }

    #[test]
    fn follows_rel_next() {
        let base = Url::parse("http://crm/api/orders?updatedSince=1").unwrap();
        let v = header::HeaderValue::from_static(
            r#"<http://crm/api/orders?page=1>; rel="prev", </api/orders?page=3>; rel="next""#,
        );
        assert_eq!(
            next_link(&base, [&v]).unwrap().as_str(),
            "http://crm/api/orders?page=3"
        );
        let none = header::HeaderValue::from_static(r#"<http://crm/x>; rel="prev""#);
        assert_eq!(next_link(&base, [&none]), None);
    }

    #[test]
    fn transaction_ids_are_stable_and_fit_the_header() {
        let r = SourceRecord {
            id: "42".into(),
            watermark: Watermark::Text("2026-01-01T00:00:00Z".into()),
            body: json!({}),
        };
        assert_eq!(
            transaction_id("ns/conn/orders", &r),
            "ns/conn/orders/42@2026-01-01T00:00:00Z"
        );
        let long = SourceRecord {
            id: "x".repeat(300),
            ..r
        };
        let id = transaction_id("k", &long);
        assert!(id.len() <= 128 && id == transaction_id("k", &long));
        // Pinned (sha256 of "k/xxx…@2026-01-01T00:00:00Z", computed with Python's hashlib).
        assert_eq!(id, format!("k/{}~21dd13d4a1dced73", "x".repeat(98)));
    }

    /// A source on 127.0.0.1 whose pages test each refusal; `other` is another origin.
    async fn hostile_source() -> (String, String) {
        use axum::{
            Router,
            http::{HeaderMap, StatusCode, header::HeaderValue},
            routing::get,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let other = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        let page = |n: usize, from: usize| {
            let items: Vec<Value> = (from..from + n)
                .map(|i| json!({"id": i, "updatedAt": i}))
                .collect();
            json!({ "items": items }).to_string()
        };
        let link = |to: String| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::LINK,
                HeaderValue::from_str(&format!("<{to}>; rel=\"next\"")).unwrap(),
            );
            headers
        };
        let (o1, o2, b1, b2) = (other.clone(), other.clone(), base.clone(), base.clone());
        let app =
            Router::new()
                .route(
                    "/leaves",
                    get(move || async move { (link(format!("{o1}/p")), page(1, 0)) }),
                )
                .route(
                    "/redirects",
                    get(move || async move {
                        (StatusCode::FOUND, [(header::LOCATION, format!("{o2}/p"))])
                    }),
                )
                .route(
                    "/redirects-home",
                    get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/p")]) }),
                )
                .route("/p", get(move || async move { page(2, 0) }))
                .route("/huge", get(|| async { "x".repeat(MAX_PAGE_BYTES + 1) }))
                .route(
                    "/many/1",
                    get(move || async move { (link(format!("{b1}/many/2")), page(6000, 0)) }),
                )
                .route(
                    "/many/2",
                    get(move || async move { (link(format!("{b2}/many/3")), page(6000, 6000)) }),
                )
                .route("/many/3", get(move || async move { page(1, 12000) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, other)
    }

    async fn fetch(url: String) -> Result<Fetched, String> {
        let config = HttpSource {
            url,
            ..source("/items")
        };
        let driver = HttpSourceDriver::new(&config, Duration::from_secs(10)).unwrap();
        driver.fetch(None).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_source_cannot_lead_ferry_elsewhere_or_flood_it() {
        let (base, _other) = hostile_source().await;
        let refused = fetch(format!("{base}/leaves")).await.unwrap_err();
        assert!(refused.contains("leaves the source's origin"), "{refused}");
        let refused = fetch(format!("{base}/redirects")).await.unwrap_err();
        assert!(refused.contains("leaves the origin"), "{refused}");
        let home = fetch(format!("{base}/redirects-home")).await.unwrap();
        assert_eq!((home.records.len(), home.complete), (2, true));
        let refused = fetch(format!("{base}/huge")).await.unwrap_err();
        assert!(refused.contains("larger than"), "{refused}");
        // Two pages of 6,000 pass the cap of records held: the third waits for the next fetch.
        let many = fetch(format!("{base}/many/1")).await.unwrap();
        assert_eq!((many.records.len(), many.complete), (12_000, false));
    }
}
