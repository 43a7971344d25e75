//! Property tests over the worker's request parsing and manifest validation: whatever bytes,
//! JSON or headers a client sends, the worker answers (no panic) and a refusal is a 4xx whose
//! JSON body carries a `message`.

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{Request, StatusCode},
};
use ferry::worker::{Worker, WorkerOptions, api, tokens::Tokens};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

/// One worker for every case (opening a store per case would dominate the run).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let router = runtime.block_on(async {
            let worker: Arc<Worker> = Worker::open(
                WorkerOptions {
                    data_dir: dir.path().to_owned(),
                    public_url: "http://127.0.0.1:1".into(),
                    forward_window: 1,
                    memory_budget: 1 << 20,
                    jetstream: None,
                },
                false,
            )
            .await
            .unwrap();
            // A transport whose host is never there: ingest stores or fails, never hangs.
            let host = json!({"url": "http://127.0.0.1:9/ingest", "timeout": "100ms"});
            let doc = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                "metadata": {"name": "t", "namespace": "default"},
                "spec": {"host": host, "maxTransactionBytes": "1Ki",
                         "storeAndForward": {"maxMessages": 50, "whenFull": "DropOldest"}}});
            worker
                .apply::<ferry::transport::runtime::TransportRuntime>(&doc, Some("default/t"))
                .await
                .unwrap();
            api::router(worker, Tokens::default())
        });
        Fixture {
            runtime,
            router,
            _dir: dir,
        }
    })
}

/// Send one request; answers the status and the JSON body.
fn send(request: Request<Body>) -> (StatusCode, Value) {
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let response = fixture.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    })
}

fn assert_answered(status: StatusCode, body: &Value) {
    assert!(
        !status.is_server_error() || body["outcome"] == "failed",
        "{status} {body}"
    );
    if status.is_client_error() {
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a {status} without a message: {body}"
        );
    }
}

fn put(path: &str, body: Vec<u8>) -> Request<Body> {
    Request::put(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        "[0-9]{1,30}[a-zA-Z]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A Transport whose spec fields carry arbitrary values: near-misses of real manifests.
fn near_transport() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("host"),
        Just("suspended"),
        Just("loadAtInit"),
        Just("maxTransactionBytes"),
        Just("storeAndForward"),
        Just("storage"),
    ];
    let sf_field = prop_oneof![
        Just("enabled"),
        Just("timeToLive"),
        Just("maxMessages"),
        Just("maxBytes"),
        Just("whenFull"),
    ];
    (
        prop::collection::vec((field, any_json()), 0..4),
        prop::collection::vec((sf_field, any_json()), 0..4),
        any_json(),
    )
        .prop_map(|(fields, sf, host_url)| {
            let mut spec = json!({"host": {"url": host_url}, "storeAndForward": {}});
            for (k, v) in sf {
                spec["storeAndForward"][k] = v;
            }
            for (k, v) in fields {
                spec[k] = v;
            }
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                   "metadata": {"name": "n", "namespace": "default"}, "spec": spec})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_to_put_are_refused_with_a_message(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let (status, answer) = send(put("/v1/transports/default/n", body));
        assert_answered(status, &answer);
        prop_assert!(status.is_client_error(), "{status} {answer}");
    }

    #[test]
    fn arbitrary_json_to_put_is_refused_with_a_message(doc in any_json()) {
        let (status, answer) = send(put("/v1/connections/default/c", doc.to_string().into_bytes()));
        assert_answered(status, &answer);
        prop_assert!(status.is_client_error(), "{status} {answer}");
    }

    #[test]
    fn near_miss_manifests_are_hosted_or_refused_naming_a_field(doc in near_transport()) {
        let (status, answer) = send(put("/v1/transports/default/n", doc.to_string().into_bytes()));
        assert_answered(status, &answer);
        prop_assert!(status.is_success() || status.is_client_error(), "{status} {answer}");
        if status.is_client_error() {
            prop_assert!(answer["message"].as_str().unwrap_or("").contains("spec"), "{answer}");
        }
    }

    #[test]
    fn arbitrary_ingest_headers_and_bodies_are_answered(
        id in prop::collection::vec(any::<u8>(), 0..200),
        content_type in prop::collection::vec(any::<u8>(), 0..300),
        declared in prop::option::of(0u64..4096),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut request = Request::post("/v1/transports/default/t/transactions");
        if let Ok(id) = axum::http::HeaderValue::from_bytes(&id) {
            request = request.header("ferry-transaction-id", id);
        }
        if let Ok(ct) = axum::http::HeaderValue::from_bytes(&content_type) {
            request = request.header("content-type", ct);
        }
        if let Some(n) = declared {
            request = request.header("content-length", n);
        }
        let (status, answer) = send(request.body(Body::from(body)).unwrap());
        assert_answered(status, &answer);
    }
}
