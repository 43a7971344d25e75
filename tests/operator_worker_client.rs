//! The operator's worker client against a real worker, reached directly at its "pod IP": a
//! loopback address of its own on the worker port, as the e2e suite's process kubelet does.

mod common;

use std::time::Duration;

use common::{TestHost, WorkerProc, spec};
use ferry::{
    operator::runtime::worker_client::{WorkerCallError, WorkerClient, WorkerPod},
    wire::TransportReport,
};
use serde_json::json;

#[cfg_attr(
    target_os = "macos",
    ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_access_pushes_and_reads_a_transport() {
    // A loopback address of its own, like a pod IP; the worker port is fixed (8080).
    let ip = format!("127.0.{}.{}", std::process::id() % 250 + 2, 17);
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start_at(dir.path(), &ip, 8080).await;
    let client = WorkerClient::direct(Duration::from_secs(5)).unwrap();
    let pod = WorkerPod {
        namespace: "default".into(),
        pod: "ferry-tp-erp-0".into(),
        pod_ip: Some(ip.clone()),
        admin_token: worker.admin.clone(),
        tls_name: None,
    };
    let manifest = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "erp", "namespace": "default", "generation": 7},
        "spec": spec(&host),
    });
    let path = "/v1/transports/default/erp";
    let report: TransportReport = client.put(&pod, path, &manifest).await.unwrap();
    assert_eq!(
        (report.state.as_str(), report.observed_generation),
        ("Down", Some(7))
    );
    let report: TransportReport = client.get(&pod, path).await.unwrap();
    assert_eq!(report.observed_generation, Some(7));

    let missing = client
        .get::<TransportReport>(&pod, "/v1/transports/default/nope")
        .await
        .unwrap_err();
    assert!(missing.is_not_hosted(), "{missing}");

    let wrong = WorkerPod {
        admin_token: "wrong".into(),
        ..pod.clone()
    };
    let refused = client
        .get::<TransportReport>(&wrong, path)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, WorkerCallError::Refused { status: 401, .. }),
        "{refused}"
    );

    drop(worker);
    let gone = client.get::<TransportReport>(&pod, path).await.unwrap_err();
    assert!(
        matches!(gone, WorkerCallError::Unreachable { .. }),
        "{gone}"
    );
}

/// Something that answers at a worker's address but is not a worker (or a worker gone wrong):
/// a redirect is not followed (the admin token goes nowhere else), and an answer larger than
/// `MAX_ANSWER_BYTES` is not read into memory.
#[cfg_attr(
    target_os = "macos",
    ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_answers_are_capped() {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    use ferry::operator::runtime::worker_client::MAX_ANSWER_BYTES;
    let ip = format!("127.0.{}.{}", std::process::id() % 250 + 2, 18);
    let followed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = followed.clone();
    let app = Router::new()
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]).into_response() }),
        )
        .route(
            "/elsewhere",
            get(move || {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                async { "{}" }
            }),
        )
        .route("/huge", get(|| async { "x".repeat(MAX_ANSWER_BYTES + 1) }));
    let listener = tokio::net::TcpListener::bind((ip.as_str(), 8080))
        .await
        .unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = WorkerClient::direct(Duration::from_secs(5)).unwrap();
    let pod = WorkerPod {
        namespace: "default".into(),
        pod: "ferry-tp-erp-0".into(),
        pod_ip: Some(ip),
        admin_token: "admin".into(),
        tls_name: None,
    };
    let redirect = client
        .get::<serde_json::Value>(&pod, "/redirect")
        .await
        .unwrap_err();
    assert!(
        matches!(redirect, WorkerCallError::Refused { status: 302, .. }),
        "{redirect}"
    );
    assert!(!followed.load(std::sync::atomic::Ordering::SeqCst));
    let huge = client
        .get::<serde_json::Value>(&pod, "/huge")
        .await
        .unwrap_err();
    assert!(matches!(huge, WorkerCallError::TooLarge { .. }), "{huge}");
    server.abort();
}

/// With TLS (`--worker-tls`): the client trusts only the operator's CA bundle and checks the
/// worker's certificate against the name it must carry (`<pod>.<worker>.<namespace>.svc`),
/// while connecting to the pod IP it was given — no DNS. A worker whose certificate was issued
/// for another worker is refused, though it is at the right address with the right token.
#[cfg_attr(
    target_os = "macos",
    ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_verifies_the_worker_by_its_name_at_its_pod_ip() {
    use ferry::operator::objects::certificates::{
        CaState, CertificatePolicy, mint_ca, unix_now, worker_names,
    };
    use ferry::operator::runtime::worker_client::tls_name;
    let ip = format!("127.0.{}.{}", std::process::id() % 250 + 2, 19);
    let policy = CertificatePolicy::default();
    let ca = CaState::step(None, unix_now(), &policy, |now| {
        mint_ca(now, policy.ca_validity)
    })
    .unwrap()
    .unwrap();
    let bundle = ca.bundle();
    let client = WorkerClient::direct_tls(Duration::from_secs(5), &bundle).unwrap();
    let pod = |worker: &str| WorkerPod {
        namespace: "default".into(),
        pod: format!("{worker}-0"),
        pod_ip: Some(ip.clone()),
        admin_token: "admin-secret".into(),
        tls_name: Some(tls_name("default", worker, &format!("{worker}-0"))),
    };
    for (serving_for, asked_as, verified) in [
        ("ferry-tp-erp", "ferry-tp-erp", true),
        ("ferry-tp-other", "ferry-tp-erp", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let issued = ca
            .issuer()
            .unwrap()
            .issue(&worker_names(serving_for, "default"), unix_now(), &policy)
            .unwrap();
        std::fs::write(dir.path().join("tls.crt"), issued.cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), issued.key).unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let worker = WorkerProc::start_at_with(
            dir.path(),
            &ip,
            8080,
            &[
                "--tls-cert-file",
                cert.to_str().unwrap(),
                "--tls-key-file",
                key.to_str().unwrap(),
            ],
        )
        .await;
        let answer = client
            .hosted(&pod(asked_as), ferry::wire::Kind::Transports)
            .await;
        match (verified, answer) {
            (true, Ok(list)) => assert!(list.items.is_empty(), "{list:?}"),
            (false, Err(WorkerCallError::Unreachable { reason, .. })) => {
                assert!(reason.contains("certificate"), "{reason}");
            }
            (_, other) => panic!("{serving_for} asked as {asked_as}: {other:?}"),
        }
        drop(worker);
    }
}
