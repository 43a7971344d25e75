//! The host a transport delivers to: keep-alive connections, "connect", and the response
//! classification of docs/transport.md (H1–H3).

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Client, Url, header};

use crate::api::transport::Host;

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
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A client for one transport's host. Dropping it closes its pooled connections.
pub struct HostClient {
    client: Client,
    url: Url,
    health: Option<Url>,
    timeout: Duration,
    transport: String,
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
        let health = host
            .health_check_path
            .as_deref()
            .map(|path| url.join(path).map_err(|e| bad(e.to_string())))
            .transpose()?;
        let timeout = host.timeout.as_std();
        // reqwest panics when no TLS provider is installed yet.
        crate::install_crypto_provider();
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(128)
            .tcp_nodelay(true)
            .build()
            .map_err(HostError::Client)?;
        Ok(Self {
            client,
            url,
            health,
            timeout,
            transport: transport.to_owned(),
        })
    }

    /// Establish that the host can be reached: its health check answers 2xx when one is
    /// configured, otherwise a TCP connection to it succeeds.
    pub async fn connect(&self) -> Result<(), String> {
        if let Some(health) = &self.health {
            let response = self
                .client
                .get(health.clone())
                .send()
                .await
                .map_err(|e| describe(&e))?;
            let status = response.status();
            return if status.is_success() {
                Ok(())
            } else {
                Err(format!("the health check {health} answered {status}"))
            };
        }
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port_or_known_default().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((host, port));
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
            Err(_) => Err(format!("connecting to {host}:{port} timed out")),
        }
    }

    /// POST one transaction; the payload goes as is, with its content type.
    pub async fn deliver(&self, id: &str, content_type: Option<&str>, payload: Bytes) -> Delivery {
        let mut request = self
            .client
            .post(self.url.clone())
            .header("Ferry-Transaction-Id", id)
            .header("Ferry-Transport", &self.transport)
            .body(payload);
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                // Read the body so the connection goes back to the pool, but no more than
                // what a reason needs: a host's answer does not get to fill the worker.
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                match classify(status.as_u16()) {
                    Delivery::Rejected(reason) => Delivery::Rejected(with_body(reason, &body)),
                    other => other,
                }
            }
            Err(e) => Delivery::Unreachable(describe(&e)),
        }
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

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the host did not answer in time".into()
    } else if e.is_connect() {
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
