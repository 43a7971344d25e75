//! How the operator talks to a worker: directly at its pod IP (the default in cluster) or
//! through the API server's pod proxy (the default out of cluster). The proxy consumes the
//! `Authorization` header, so the admin token always travels as `Ferry-Token`.
//!
//! With `--worker-tls` the direct way is HTTPS verified with the operator's CA bundle: the
//! request names the worker by its DNS name (`<pod>.<worker>.<namespace>.svc`, which its
//! certificate names), and the client's resolver answers that name with the pod IP from the
//! operator's cache, so no cluster DNS is asked and the certificate is checked against the
//! worker's own name. Through the proxy it is `https:` to the pod (the API server does not
//! verify the pod's certificate; docs/security.md says so).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use http::{Method, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::operator::objects::builders::WORKER_PORT;
use crate::wire;

/// `--worker-access`
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerAccess {
    /// `http://<pod IP>:8080` — the operator runs in the cluster network.
    Direct,
    /// `/api/v1/namespaces/<ns>/pods/<pod>:8080/proxy/...` through the API server.
    Proxy,
}

/// As written on the command line: `direct`, `proxy`.
impl std::fmt::Display for WorkerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerAccess::Direct => "direct",
            WorkerAccess::Proxy => "proxy",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerCallError {
    #[error("the worker pod {pod} has no IP yet")]
    NoPodIp { pod: String },
    #[error("the worker {pod} did not answer {path}: {reason}")]
    Unreachable {
        pod: String,
        path: String,
        reason: String,
    },
    #[error("the worker {pod} answered {status} to {path}: {message}")]
    Refused {
        pod: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("the worker {pod} answered {path} with more than {MAX_ANSWER_BYTES} bytes")]
    TooLarge { pod: String, path: String },
    #[error("the worker {pod} answered {path} with something that is not its report: {reason}")]
    Malformed {
        pod: String,
        path: String,
        reason: String,
    },
}

/// The largest answer read from a worker: a report, or what a pool worker hosts (about a hundred
/// bytes a resource). A worker that sends more is not read further.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

impl WorkerCallError {
    /// 404 from the worker: it does not host the resource (it restarted on an empty disk, or
    /// was never given it).
    pub fn is_not_hosted(&self) -> bool {
        matches!(self, WorkerCallError::Refused { status: 404, .. })
    }
}

/// One worker pod and how to reach it.
#[derive(Clone, Debug)]
pub struct WorkerPod {
    pub namespace: String,
    pub pod: String,
    pub pod_ip: Option<String>,
    pub admin_token: String,
    /// With TLS: the name its certificate is verified against ([`tls_name`]).
    pub tls_name: Option<String>,
}

/// The name a worker pod's certificate is checked against: `<pod>.<worker>.<namespace>.svc`
/// (its certificate names `*.<worker>.<namespace>.svc`).
pub fn tls_name(namespace: &str, set: &str, pod: &str) -> String {
    format!("{pod}.{set}.{namespace}.svc")
}

/// Calls the worker API the chosen way.
#[derive(Clone)]
pub struct WorkerClient {
    access: WorkerAccess,
    http: Arc<RwLock<reqwest::Client>>,
    /// With TLS: the pod IP of each worker name asked for (the resolver's answers).
    tls: Option<PodIps>,
    kube: Option<kube::Client>,
    timeout: Duration,
}

/// Each worker name's pod IP, as last asked for.
type PodIps = Arc<Mutex<HashMap<String, IpAddr>>>;

/// Answers a worker's name with the pod IP last asked for it; nothing else resolves.
struct PodAddresses(PodIps);

impl reqwest::dns::Resolve for PodAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let found = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name.as_str())
            .copied();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let ip =
                found.ok_or_else(|| format!("{name} is not a worker pod the operator knows"))?;
            Ok(Box::new(std::iter::once(SocketAddr::new(ip, 0))) as reqwest::dns::Addrs)
        })
    }
}

/// The most worker names remembered; beyond, the map starts again (names come back with
/// their next call).
const MAX_ADDRESSES: usize = 100_000;

impl WorkerClient {
    /// Straight to the pod IP. Redirects are not followed: the admin token goes to the worker
    /// asked and nowhere else (a 3xx is a refusal).
    pub fn direct(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            access: WorkerAccess::Direct,
            http: Arc::new(RwLock::new(Self::http(timeout, None)?)),
            tls: None,
            kube: None,
            timeout,
        })
    }

    /// Straight to the pod, over TLS verified with `bundle` (PEM) only.
    pub fn direct_tls(timeout: Duration, bundle: &str) -> Result<Self, reqwest::Error> {
        let addresses = Arc::new(Mutex::new(HashMap::new()));
        let http = Self::http(timeout, Some((bundle, addresses.clone())))?;
        Ok(Self {
            access: WorkerAccess::Direct,
            http: Arc::new(RwLock::new(http)),
            tls: Some(addresses),
            kube: None,
            timeout,
        })
    }

    fn http(
        timeout: Duration,
        tls: Option<(&str, PodIps)>,
    ) -> Result<reqwest::Client, reqwest::Error> {
        // reqwest panics when no TLS provider is installed yet.
        crate::install_crypto_provider();
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        match tls {
            None => builder.build(),
            Some((bundle, addresses)) => builder
                .tls_certs_only(reqwest::Certificate::from_pem_bundle(bundle.as_bytes())?)
                .https_only(true)
                .dns_resolver(Arc::new(PodAddresses(addresses)))
                .build(),
        }
    }

    /// Trust `bundle` from now on (the CA was renewed); a direct client without TLS ignores it.
    pub fn trust(&self, bundle: &str) -> Result<(), reqwest::Error> {
        let Some(addresses) = &self.tls else {
            return Ok(());
        };
        let http = Self::http(self.timeout, Some((bundle, addresses.clone())))?;
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
        Ok(())
    }

    /// Through the API server's pod proxy; to `https:` pods with `tls`.
    pub fn proxy(kube: kube::Client, timeout: Duration, tls: bool) -> Self {
        Self {
            access: WorkerAccess::Proxy,
            http: Arc::new(RwLock::new(reqwest::Client::new())),
            tls: tls.then(Default::default),
            kube: Some(kube),
            timeout,
        }
    }

    pub fn access(&self) -> WorkerAccess {
        self.access
    }

    /// `PUT` a manifest (with `resolved`, for a connection); answers the report.
    pub async fn put<R: DeserializeOwned>(
        &self,
        worker: &WorkerPod,
        path: &str,
        body: &Value,
    ) -> Result<R, WorkerCallError> {
        self.call(worker, Method::PUT, path, Some(body)).await
    }

    /// `DELETE` the resource: the worker stops hosting it (a resource leaving a pool worker);
    /// `purge` says whether what it kept on the worker's volume goes too.
    pub async fn delete(
        &self,
        worker: &WorkerPod,
        kind: crate::wire::Kind,
        key: &str,
        purge: crate::wire::Purge,
    ) -> Result<(), WorkerCallError> {
        let path = purge.delete_path(kind, key);
        self.call::<Value>(worker, Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    /// `GET` what the worker hosts of a kind (`wire::hosted_path`).
    pub async fn hosted(
        &self,
        worker: &WorkerPod,
        kind: crate::wire::Kind,
    ) -> Result<crate::wire::HostedList, WorkerCallError> {
        self.call(worker, Method::GET, &crate::wire::hosted_path(kind), None)
            .await
    }

    /// `GET` the report.
    pub async fn get<R: DeserializeOwned>(
        &self,
        worker: &WorkerPod,
        path: &str,
    ) -> Result<R, WorkerCallError> {
        self.call(worker, Method::GET, path, None).await
    }

    /// A long poll of the report at `path` (see `wire::CHANGED_FROM`): `Some((report, etag))`
    /// when it changed from `etag` (or, without one, at once), `None` when nothing changed
    /// within `wait`.
    pub async fn watch<R: DeserializeOwned>(
        &self,
        worker: &WorkerPod,
        path: &str,
        etag: Option<&str>,
        wait: Duration,
        settle: Duration,
    ) -> Result<Option<(R, String)>, WorkerCallError> {
        let path = match etag {
            Some(etag) => format!(
                "{path}?{}={etag}&wait={}&settle={}",
                wire::CHANGED_FROM,
                wait.as_secs(),
                settle.as_secs()
            ),
            None => path.to_owned(),
        };
        // The worker holds the answer up to `wait`: the call may take that long and more.
        let timeout = wait + self.timeout;
        let (status, etag, bytes) = self
            .exchange(worker, Method::GET, &path, None, timeout)
            .await?;
        if status == 304 {
            return Ok(None);
        }
        let report = self.parse(worker, &path, status, &bytes)?;
        Ok(Some((report, etag.unwrap_or_default())))
    }

    async fn call<R: DeserializeOwned>(
        &self,
        worker: &WorkerPod,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<R, WorkerCallError> {
        let (status, _, bytes) = self
            .exchange(worker, method, path, body, self.timeout)
            .await?;
        self.parse(worker, path, status, &bytes)
    }

    /// The answer's status, its `ETag` (unquoted) and its body.
    async fn exchange(
        &self,
        worker: &WorkerPod,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, Option<String>, Vec<u8>), WorkerCallError> {
        let etag_of = |headers: &http::HeaderMap| {
            headers
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_owned())
        };
        let unreachable = |reason: String| WorkerCallError::Unreachable {
            pod: worker.pod.clone(),
            path: path.to_owned(),
            reason,
        };
        let too_large = || WorkerCallError::TooLarge {
            pod: worker.pod.clone(),
            path: path.to_owned(),
        };
        let (status, etag, bytes) = match (&self.access, &self.kube) {
            (WorkerAccess::Proxy, Some(kube)) => {
                let mut request = Request::builder()
                    .method(method)
                    .uri(proxy_path(worker, path, self.tls.is_some()))
                    .header(wire::TOKEN_HEADER, &worker.admin_token);
                if body.is_some() {
                    request = request.header("Content-Type", "application/json");
                }
                let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
                let request = request.body(body).map_err(|e| unreachable(e.to_string()))?;
                let call = kube.send(request.map(kube::client::Body::from));
                let response = tokio::time::timeout(timeout, call)
                    .await
                    .map_err(|_| unreachable("timed out".into()))?
                    .map_err(|e| unreachable(crate::error_chain(&e)))?;
                let status = response.status().as_u16();
                let etag = etag_of(response.headers());
                let capped = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
                let bytes = match http_body_util::BodyExt::collect(capped).await {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(too_large());
                    }
                    Err(e) => return Err(unreachable(e.to_string())),
                };
                (status, etag, bytes.to_vec())
            }
            _ => {
                let ip = worker
                    .pod_ip
                    .as_deref()
                    .ok_or_else(|| WorkerCallError::NoPodIp {
                        pod: worker.pod.clone(),
                    })?;
                let url = match (&self.tls, &worker.tls_name) {
                    (Some(addresses), Some(name)) => {
                        let ip: IpAddr = ip.parse().map_err(|_| {
                            unreachable(format!("its pod IP {ip:?} is not an address"))
                        })?;
                        let mut addresses = addresses.lock().unwrap_or_else(|e| e.into_inner());
                        if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(name) {
                            addresses.clear();
                        }
                        addresses.insert(name.clone(), ip);
                        format!("https://{name}:{WORKER_PORT}{path}")
                    }
                    _ => direct_url(ip, path),
                };
                let http = self.http.read().unwrap_or_else(|e| e.into_inner()).clone();
                let mut request = http
                    .request(method, url)
                    .timeout(timeout)
                    .header(wire::TOKEN_HEADER, &worker.admin_token);
                if let Some(body) = body {
                    request = request.json(body);
                }
                let mut response = request
                    .send()
                    .await
                    .map_err(|e| unreachable(crate::error_chain(&e)))?;
                let status = response.status().as_u16();
                let etag = etag_of(response.headers());
                let bytes = crate::read_capped(&mut response, MAX_ANSWER_BYTES)
                    .await
                    .map_err(|e| unreachable(crate::error_chain(&e)))?
                    .ok_or_else(too_large)?;
                (status, etag, bytes)
            }
        };
        Ok((status, etag, bytes))
    }

    /// A 2xx answer's body as `R`; any other answer as the worker's refusal.
    fn parse<R: DeserializeOwned>(
        &self,
        worker: &WorkerPod,
        path: &str,
        status: u16,
        bytes: &[u8],
    ) -> Result<R, WorkerCallError> {
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
                });
            return Err(WorkerCallError::Refused {
                pod: worker.pod.clone(),
                path: path.to_owned(),
                status,
                message,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| WorkerCallError::Malformed {
            pod: worker.pod.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// `http://10.0.0.7:8080/v1/...`; an IPv6 pod IP goes in brackets.
pub fn direct_url(pod_ip: &str, path: &str) -> String {
    if pod_ip.contains(':') {
        format!("http://[{pod_ip}]:{WORKER_PORT}{path}")
    } else {
        format!("http://{pod_ip}:{WORKER_PORT}{path}")
    }
}

/// The API server's proxy path to a pod's port (`https:` to a worker serving TLS).
pub fn proxy_path(worker: &WorkerPod, path: &str, tls: bool) -> String {
    let scheme = if tls { "https:" } else { "" };
    format!(
        "/api/v1/namespaces/{}/pods/{scheme}{}:{WORKER_PORT}/proxy{path}",
        worker.namespace, worker.pod
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: Option<&str>) -> WorkerPod {
        WorkerPod {
            namespace: "plant-a".into(),
            pod: "ferry-tp-erp-0".into(),
            pod_ip: ip.map(str::to_owned),
            admin_token: "t".into(),
            tls_name: None,
        }
    }

    #[test]
    fn urls_for_both_ways() {
        assert_eq!(direct_url("10.1.2.3", "/v1/x"), "http://10.1.2.3:8080/v1/x");
        assert_eq!(direct_url("fd00::7", "/v1/x"), "http://[fd00::7]:8080/v1/x");
        assert_eq!(
            proxy_path(&pod(None), "/v1/transports/plant-a/erp", false),
            "/api/v1/namespaces/plant-a/pods/ferry-tp-erp-0:8080/proxy/v1/transports/plant-a/erp"
        );
        assert_eq!(
            proxy_path(&pod(None), "/v1/x", true),
            "/api/v1/namespaces/plant-a/pods/https:ferry-tp-erp-0:8080/proxy/v1/x"
        );
        assert_eq!(
            tls_name("plant-a", "ferry-wp-fleet", "ferry-wp-fleet-2"),
            "ferry-wp-fleet-2.ferry-wp-fleet.plant-a.svc"
        );
    }

    #[tokio::test]
    async fn a_pod_without_an_ip_is_not_called() {
        crate::install_crypto_provider();
        let client = WorkerClient::direct(Duration::from_secs(1)).unwrap();
        let err = client.get::<Value>(&pod(None), "/v1/x").await.unwrap_err();
        assert!(matches!(err, WorkerCallError::NoPodIp { .. }), "{err}");
    }
}
