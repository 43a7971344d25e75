//! The host a transport delivers to: keep-alive connections, "connect", and the response
//! classification of docs/transport.md (H1–H3).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use reqwest::Url;

use crate::api::transport::Host;
use crate::wire;

/// The most of a host's answer body that is read (a rejection's reason shows its start).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// How the host answered one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx.
    Delivered,
    /// Refused, timed out, 408, 429, 5xx (or a redirect, which ferry does not follow): the
    /// transaction is kept (H2, T3).
    Unreachable(String),
    /// Any other 4xx: the host refused this one transaction.
    Rejected(String),
}

/// The classification of an HTTP status (H1–H3).
pub fn classify(status: u16) -> Delivery {
    match status {
        200..=299 => Delivery::Delivered,
        408 | 429 => Delivery::Unreachable(format!("the host answered {status}")),
        400..=499 => Delivery::Rejected(format!("the host rejected the transaction with {status}")),
        500..=599 => Delivery::Unreachable(format!("the host answered {status}")),
        // 1xx/3xx: not an answer ferry can act on; keep the transaction rather than lose it.
        _ => Delivery::Unreachable(format!(
            "the host answered {status}, which is not a delivery"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("spec.host.url {url:?} is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("spec.host.url: {0}")]
    Forbidden(#[source] crate::destinations::Refusal),
    #[error("cannot set up TLS for the host: {0}")]
    Tls(#[source] rustls::Error),
}

impl HostError {
    /// The spec is at fault (not the worker): its producer is told 400.
    pub fn is_in_spec(&self) -> bool {
        matches!(self, Self::BadUrl { .. } | Self::Forbidden(_))
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<crate::destinations::GuardedResolver>>;

/// A client for one transport's host: hyper's pooled HTTP/1.1 client straight, because the
/// delivery path is a reverse proxy's hot path and a general-purpose client's layers
/// (redirects, retries, proxies, URL conversion per request) were a fifth of its time.
/// Dropping it closes its pooled connections.
pub struct HostClient {
    client: Client<Connector, Full<Bytes>>,
    url: Url,
    uri: Uri,
    health: Option<Uri>,
    timeout: Duration,
    transport: HeaderValue,
}

impl HostClient {
    /// `transport` is `namespace/name`, sent as `Ferry-Transport`.
    pub fn new(host: &Host, transport: &str) -> Result<Self, HostError> {
        let bad = |reason: String| HostError::BadUrl {
            url: host.url.clone(),
            reason,
        };
        let url = Url::parse(&host.url).map_err(|e| bad(e.to_string()))?;
        if url.host_str().is_none() {
            return Err(bad("it has no host".into()));
        }
        // A literal forbidden address never; a name, each time it is resolved (the connector's
        // resolver leaves forbidden addresses out).
        if let Some(refusal) = crate::destinations::for_process().literal(&url) {
            return Err(HostError::Forbidden(refusal));
        }
        let as_uri = |url: &Url| url.as_str().parse::<Uri>().map_err(|e| bad(e.to_string()));
        let uri = as_uri(&url)?;
        let health = host
            .health_check_path
            .as_deref()
            .map(|path| url.join(path).map_err(|e| bad(e.to_string())))
            .transpose()?
            .map(|health| as_uri(&health))
            .transpose()?;
        let timeout = host.timeout.as_std();
        let transport = HeaderValue::from_str(transport)
            .map_err(|e| bad(format!("the transport's name is not a header value: {e}")))?;
        // The same certificate checks as every other client of ferry: the platform's roots.
        crate::install_crypto_provider();
        let tls = {
            use rustls_platform_verifier::ConfigVerifierExt;
            rustls::ClientConfig::with_platform_verifier().map_err(HostError::Tls)?
        };
        let mut http = HttpConnector::new_with_resolver(crate::destinations::GuardedResolver);
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(128)
            .build(connector);
        Ok(Self {
            client,
            url,
            uri,
            health,
            timeout,
            transport,
        })
    }

    /// Establish that the host can be reached: its health check answers 2xx when one is
    /// configured, otherwise a TCP connection to it succeeds.
    pub async fn connect(&self) -> Result<(), String> {
        if let Some(health) = &self.health {
            let request = Request::get(health.clone())
                .body(Full::default())
                .map_err(|e| format!("cannot build the health check: {e}"))?;
            let (status, _) = self.exchange(request).await?;
            return if status.is_success() {
                Ok(())
            } else {
                Err(format!("the health check {health} answered {status}"))
            };
        }
        // An IPv6 host without its brackets, as the resolver takes it.
        let host = self
            .url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self.url.port_or_known_default().unwrap_or(80);
        let connect = async {
            let addresses = crate::destinations::resolve_allowed(host, port).await?;
            tokio::net::TcpStream::connect(&addresses[..]).await
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
            Err(_) => Err(format!("connecting to {host}:{port} timed out")),
        }
    }

    /// POST one transaction; the payload goes as is, with its content type.
    pub async fn deliver(&self, id: &str, content_type: Option<&str>, payload: Bytes) -> Delivery {
        let mut request = Request::post(self.uri.clone())
            .header(wire::TRANSACTION_ID_HEADER, id)
            .header(wire::TRANSPORT_HEADER, self.transport.clone());
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        // Ids and content types were checked at ingest; one the HTTP types still refuse is
        // this transaction's fault, not the host's.
        let request = match request.body(Full::new(payload)) {
            Ok(request) => request,
            Err(e) => return Delivery::Rejected(format!("cannot send the transaction: {e}")),
        };
        match self.exchange(request).await {
            Ok((status, body)) => match classify(status.as_u16()) {
                Delivery::Rejected(reason) => Delivery::Rejected(with_body(reason, &body)),
                other => other,
            },
            Err(why) => Delivery::Unreachable(why),
        }
    }

    /// Send `request` and read the answer's status and at most [`MAX_ANSWER_BYTES`] of its
    /// body (so the connection goes back to the pool), all within the host's timeout.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| describe(&e))?;
            let status = response.status();
            // Read to the end so the connection goes back to the pool; an answer larger than
            // a reason needs does not get to fill the worker: its start is kept and the
            // connection closed with the rest.
            let mut body = response.into_body();
            let mut kept = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    if kept.len() + data.len() > MAX_ANSWER_BYTES {
                        break;
                    }
                    kept.extend_from_slice(&data);
                }
            }
            Ok((status, Bytes::from(kept)))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err("the host did not answer in time".into()))
    }
}

fn with_body(reason: String, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        reason
    } else {
        format!("{reason}: {text}")
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        format!("cannot connect to the host: {}", crate::error_chain(e))
    } else {
        format!("the request to the host failed: {}", crate::error_chain(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_design_md() {
        for (status, expected) in [
            (200, "delivered"),
            (201, "delivered"),
            (204, "delivered"),
            (408, "unreachable"),
            (429, "unreachable"),
            (500, "unreachable"),
            (502, "unreachable"),
            (503, "unreachable"),
            (400, "rejected"),
            (401, "rejected"),
            (404, "rejected"),
            (409, "rejected"),
            (422, "rejected"),
            (301, "unreachable"),
            (100, "unreachable"),
        ] {
            let got = match classify(status) {
                Delivery::Delivered => "delivered",
                Delivery::Unreachable(_) => "unreachable",
                Delivery::Rejected(_) => "rejected",
            };
            assert_eq!(got, expected, "status {status}");
        }
    }
}
