//! `kubectl ferry`: suspend/resume transports, start/stop connections (optionally waiting for
//! the documented result), a status table, a transport's token rotated, and for incidents a
//! transport's queue and a worker's log — against the current kubeconfig context and namespace, as kubectl does. The binary is `src/bin/kubectl-ferry.rs`; on the PATH, kubectl
//! finds it as a plugin.

pub mod annotate;
pub mod desired;
pub mod rotate;
pub mod table;
pub mod worker;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use desired::{Change, PluginError};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl ferry",
    bin_name = "kubectl ferry",
    version,
    about = "Suspend and resume Transports, start and stop Connections, see their status, queues and logs"
)]
pub struct Cli {
    /// The namespace (default: the current context's, as kubectl).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Suspend a transport: it disconnects and keeps what arrives in its queue.
    Suspend(TransportArgs),
    /// Resume a transport: it connects again and forwards its queue.
    Resume(TransportArgs),
    /// Start a connection (it goes through the startup queue).
    Start(ConnectionArgs),
    /// Stop a connection (its worker is scaled to zero).
    Stop(ConnectionArgs),
    /// Pause the operator's reconciliation of a resource (annotation ferry.dev/reconcile:
    /// paused): it changes none of its objects and pushes nothing to its worker; the status
    /// still follows the worker.
    Pause {
        kind: annotate::PausableKind,
        name: String,
    },
    /// Resume the operator's reconciliation of a resource: what changed meanwhile is applied.
    Unpause {
        kind: annotate::PausableKind,
        name: String,
    },
    /// Restart a resource's runtime on its worker, without restarting the pod (annotation
    /// ferry.dev/restart set to the time now): a transport's host connection and forwarder
    /// (its queue kept), a connection's startup (through the startup queue).
    Restart {
        kind: annotate::RestartableKind,
        name: String,
    },
    /// A table of every Transport and Connection: state, queue depth, worker (pool/worker in a
    /// WorkerPool), last report, Ready.
    Status {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// A WorkerPool's workers (ready, hosted of capacity) and the resources on each, then those
    /// that name it but have no place yet (and why).
    Pool { name: String },
    /// A transport's queue from its worker: depth, bytes, the oldest transactions' ids, sizes
    /// and ages (never their payloads).
    Queue {
        kind: TransportKind,
        name: String,
        /// How many of the oldest transactions to list (at most 100).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(0..=100))]
        limit: u16,
        /// `json`: the worker's answer as it is.
        #[arg(short, long)]
        output: Option<Output>,
        /// How the worker is reached: through the API server's pod proxy (the default), or
        /// `direct` at its pod IP, from inside the cluster network or where the API server
        /// cannot proxy to pods (as the operator's flag of the same name).
        #[arg(long, env = "FERRY_WORKER_ACCESS", value_enum, default_value = "proxy")]
        worker_access: crate::operator::runtime::worker_client::WorkerAccess,
    },
    /// A new ingest token for a transport's producers: its Secret is made anew by the
    /// operator and the worker refuses the old token; the queue and totals are kept.
    RotateToken {
        kind: TransportKind,
        name: String,
        /// The worker's admin token instead (a dedicated worker's, in `<worker>-admin`): the
        /// worker restarts with the new one, its queue kept.
        #[arg(long)]
        admin: bool,
        /// How long to wait for the new Secret.
        #[arg(long, default_value = "2m")]
        timeout: crate::api::duration::Duration,
    },
    /// The log of a transport's or connection's worker pod.
    Logs {
        kind: ResourceKind,
        name: String,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// The previous container's log (after a restart).
        #[arg(short, long)]
        previous: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<i64>,
        /// Only lines newer than this (e.g. 10m).
        #[arg(long)]
        since: Option<crate::api::duration::Duration>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Output {
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ResourceKind {
    #[value(alias = "transports", alias = "tp")]
    Transport,
    #[value(alias = "connections", alias = "conn")]
    Connection,
}

#[derive(clap::Args, Debug)]
pub struct TransportArgs {
    pub kind: TransportKind,
    pub name: String,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(clap::Args, Debug)]
pub struct ConnectionArgs {
    pub kind: ConnectionKind,
    pub name: String,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TransportKind {
    #[value(alias = "transports", alias = "tp")]
    Transport,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ConnectionKind {
    #[value(alias = "connections", alias = "conn")]
    Connection,
}

#[derive(clap::Args, Debug)]
pub struct Wait {
    /// Return only when the status shows the documented result.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "2m")]
    pub timeout: crate::api::duration::Duration,
}

impl Wait {
    fn limit(&self) -> Option<Duration> {
        self.wait.then(|| self.timeout.as_std())
    }
}

/// A client for the current (or given) context, and the namespace to use.
pub async fn connect(cli: &Cli) -> Result<(kube::Client, String), PluginError> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match Kubeconfig::read() {
        Ok(kubeconfig) => kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| PluginError::Config(e.into()))?,
        // In a pod: the service account.
        Err(_) => kube::Config::infer()
            .await
            .map_err(|e| PluginError::Config(e.into()))?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| PluginError::Config(e.into()))?;
    Ok((client, namespace))
}

/// Carry out one command; answers what to print.
pub async fn run(
    cli: &Cli,
    client: kube::Client,
    namespace: &str,
    poll: Duration,
) -> Result<String, PluginError> {
    let (change, name, wait) = match &cli.command {
        Command::Status { all_namespaces } => {
            let namespace = (!all_namespaces).then_some(namespace);
            return table::status(client, namespace).await;
        }
        Command::Pool { name } => return table::pool(client, namespace, name).await,
        Command::Queue {
            name,
            limit,
            output,
            worker_access,
            ..
        } => {
            let json = matches!(output, Some(Output::Json));
            let limit = usize::from(*limit);
            return worker::queue(client, *worker_access, namespace, name, limit, json).await;
        }
        Command::RotateToken {
            name,
            admin,
            timeout,
            ..
        } => {
            let token = if *admin {
                rotate::Token::Admin
            } else {
                rotate::Token::Ingest
            };
            let limit = timeout.as_std();
            return rotate::rotate_token(client, namespace, name, token, limit, poll).await;
        }
        Command::Logs {
            kind,
            name,
            follow,
            previous,
            tail,
            since,
        } => {
            let options = worker::LogOptions {
                follow: *follow,
                previous: *previous,
                tail: *tail,
                since_seconds: since
                    .as_ref()
                    .map(|s| i64::try_from(s.as_std().as_secs()).unwrap_or(i64::MAX)),
            };
            let mut stdout = std::io::stdout();
            return worker::logs(client, namespace, *kind, name, &options, &mut stdout).await;
        }
        Command::Pause { kind, name } => {
            return annotate::pause(client, namespace, *kind, name, true).await;
        }
        Command::Unpause { kind, name } => {
            return annotate::pause(client, namespace, *kind, name, false).await;
        }
        Command::Restart { kind, name } => {
            return annotate::restart(client, namespace, *kind, name).await;
        }
        Command::Suspend(a) => (Change::Suspend, &a.name, &a.wait),
        Command::Resume(a) => (Change::Resume, &a.name, &a.wait),
        Command::Start(a) => (Change::Start, &a.name, &a.wait),
        Command::Stop(a) => (Change::Stop, &a.name, &a.wait),
    };
    desired::apply(client, namespace, name, change, wait.limit(), poll).await
}

#[cfg(test)]
mod tests {
    //! The plugin's commands against the mock API server (the reconcilers' helpers).

    use super::*;
    use crate::operator::fixtures::{mock, not_found, ready_condition, resource, respond};
    use http::Method;
    use serde_json::json;

    fn cli(line: &str) -> Cli {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[tokio::test]
    async fn suspend_waits_for_the_documented_state() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (method, path, body, send) = handle.next().await;
            assert_eq!(method, Method::PATCH);
            assert!(
                path.starts_with("/apis/ferry.dev/v1alpha1/namespaces/plant-a/transports/erp?")
                    && path.contains("fieldManager=kubectl-ferry"),
                "{path}"
            );
            assert_eq!(body, json!({"spec": {"suspended": true}}));
            send.send_response(respond(200, resource("Transport", "erp", 3, json!({}))));
            // The worker has not got generation 3 yet, then it has.
            for (state, generation) in [("Store and Forward", 2), ("S&F Suspended", 3)] {
                let (method, _, _, send) = handle.next().await;
                assert_eq!(method, Method::GET);
                send.send_response(respond(
                    200,
                    resource(
                        "Transport",
                        "erp",
                        3,
                        json!({"state": state, "observedGeneration": generation}),
                    ),
                ));
            }
        });
        let command = cli("kubectl-ferry suspend transport erp --wait --timeout 10s");
        let out = run(&command, client, "plant-a", Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(out, "transport plant-a/erp suspended: S&F Suspended");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_wait_that_times_out_says_what_it_saw() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, path, body, send) = handle.next().await;
            assert!(path.contains("/connections/crm?"), "{path}");
            assert_eq!(body, json!({"spec": {"started": true}}));
            send.send_response(respond(200, resource("Connection", "crm", 5, json!({}))));
            while let Some((_, send)) = handle.next_request().await {
                send.send_response(respond(
                    200,
                    resource(
                        "Connection",
                        "crm",
                        5,
                        json!({"status": "Restarting", "startupQueuePosition": 2,
                               "conditions": ready_condition("False", "QueuedForStartup", "waiting at position 2", 5)}),
                    ),
                ));
            }
        });
        let command = cli("kubectl-ferry -n plant-a start conn crm --wait --timeout 50ms");
        let error = run(&command, client, "plant-a", Duration::from_millis(10))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "connection plant-a/crm started, but after 50ms Connection plant-a/crm is Restarting \
             (waiting for Running); Ready=False QueuedForStartup: waiting at position 2"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_started_connection_that_fails_is_reported_at_once() {
        let (client, mut handle) = mock();
        tokio::spawn(async move {
            let (_, _, _, send) = handle.next().await;
            send.send_response(respond(200, resource("Connection", "crm", 2, json!({}))));
            let (_, _, _, send) = handle.next().await;
            send.send_response(respond(
                200,
                resource(
                    "Connection",
                    "crm",
                    2,
                    json!({"status": "Failed", "conditions": ready_condition("False", "SyncSetFailed", "orders: source answered 500", 2)}),
                ),
            ));
        });
        let error = run(
            &cli("kubectl-ferry start connection crm --wait"),
            client,
            "plant-a",
            Duration::from_millis(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("is Failed; Ready=False SyncSetFailed: orders: source answered 500"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unknown_resource_is_named() {
        let (client, mut handle) = mock();
        tokio::spawn(async move {
            let (_, _, _, send) = handle.next().await;
            send.send_response(not_found());
        });
        let error = run(
            &cli("kubectl-ferry stop connection nope"),
            client,
            "plant-a",
            Duration::from_millis(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(error, "Connection plant-a/nope does not exist");
    }

    #[tokio::test]
    async fn status_lists_every_transport_and_connection() {
        let (client, mut handle) = mock();
        tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(
                path.starts_with("/apis/ferry.dev/v1alpha1/transports"),
                "{path}"
            );
            send.send_response(respond(200, json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "TransportList", "metadata": {},
                "items": [resource("Transport", "erp", 1, json!({"state": "Store and Forward", "queue": {"messages": 42, "bytes": 1, "oldestAgeSeconds": 3},
                    "conditions": ready_condition("True", "StoreAndForward", "the host does not answer: connection refused", 1)})),
                    // Stored before the CRD had a bound: listed, not an error hiding the rest.
                    {"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                     "metadata": {"name": "huge", "namespace": "plant-a"},
                     "spec": {"host": {"url": "http://erp/ingest"},
                              "storeAndForward": {"maxBytes": "99999999999999999999"}},
                     "status": {"conditions": ready_condition("False", "InvalidSpec", "spec.storeAndForward.maxBytes: too large", 1)}}]})));
            let (_, path, _, send) = handle.next().await;
            assert!(
                path.starts_with("/apis/ferry.dev/v1alpha1/connections"),
                "{path}"
            );
            send.send_response(respond(
                200,
                json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectionList", "metadata": {},
                "items": [resource("Connection", "crm", 1, json!({})),
                    // Not seen by the operator yet: the reader's own error.
                    {"apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
                     "metadata": {"name": "odd", "namespace": "plant-a"},
                     "spec": {"frequency": "forever"}}]}),
            ));
        });
        let out = run(
            &cli("kubectl-ferry status -A"),
            client,
            "default",
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].starts_with("NAMESPACE   KIND"), "{out}");
        // By namespace, kind and name, as kubectl sorts.
        assert!(lines[1].contains("Connection   crm    Pending"), "{out}");
        assert!(lines[1].contains("never"), "{out}");
        assert!(
            lines[3].contains("Transport    erp    Store and Forward   42"),
            "{out}"
        );
        assert!(
            lines[3].ends_with("the host does not answer: connection refused"),
            "{out}"
        );
        assert!(
            lines[2].contains("Connection   odd    Unreadable")
                && lines[2].contains("ferry cannot read it:"),
            "{out}"
        );
        assert!(
            lines[4].contains("Transport    huge   Unreadable")
                && lines[4].ends_with("spec.storeAndForward.maxBytes: too large"),
            "{out}"
        );
    }

    fn with_uid(mut object: serde_json::Value, uid: &str) -> serde_json::Value {
        object["metadata"]["uid"] = uid.into();
        object
    }

    /// `queue transport`: the transport, its controlled Secret's admin token, then the worker's
    /// queue route through the API server's pod proxy; printed as a report and a table.
    #[tokio::test]
    async fn queue_asks_the_worker_through_the_pod_proxy() {
        use crate::operator::fixtures::{controlled_by, worker_object};
        crate::install_crypto_provider(); // as the binary does first
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(
                path.ends_with("/namespaces/plant-a/transports/erp"),
                "{path}"
            );
            send.send_response(respond(
                200,
                with_uid(resource("Transport", "erp", 1, json!({})), "uid-erp"),
            ));
            // Its admin Secret, which producers are never given.
            let (_, path, _, send) = handle.next().await;
            assert!(
                path.ends_with("/namespaces/plant-a/secrets/ferry-tp-erp-admin"),
                "{path}"
            );
            send.send_response(respond(
                200,
                worker_object("secrets", "ferry-tp-erp-admin", controlled_by("uid-erp")),
            ));
            let (request, send) = handle.next_request().await.expect("the worker call");
            assert_eq!(
                request.uri().to_string(),
                "/api/v1/namespaces/plant-a/pods/ferry-tp-erp-0:8080/proxy/v1/transports/plant-a/erp/queue?limit=2"
            );
            assert_eq!(
                request.headers()["Ferry-Token"],
                "stolen",
                "the Secret's admin token"
            );
            send.send_response(respond(
                200,
                json!({
                "transport": "plant-a/erp", "state": "Store and Forward", "messages": 3,
                "bytes": 6144, "oldestAgeSeconds": 754,
                "oldest": [{"id": "order-1", "bytes": 1024, "contentType": null,
                            "receivedMs": 1_795_000_000_000_u64, "ageSeconds": 754},
                           {"id": "order-2", "bytes": 2048, "contentType": "text/csv",
                            "receivedMs": 1_795_000_679_000_u64, "ageSeconds": 75}]}),
            ));
        });
        let out = run(
            &cli("kubectl-ferry queue transport erp --limit 2"),
            client,
            "plant-a",
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        server.await.unwrap();
        assert_eq!(
            out,
            "Transport plant-a/erp: Store and Forward\n\
             queue: 3 transactions, 6144 bytes, oldest 12m old\n\
             #   ID        BYTES   AGE\n\
             1   order-1   1024    12m\n\
             2   order-2   2048    75s\n\
             (the oldest 2 of 3; --limit shows more)\n"
        );
    }

    /// A Secret of the worker's name that the transport does not control gives no token, and
    /// the worker is not called.
    #[tokio::test]
    async fn queue_uses_no_token_of_a_foreign_secret() {
        use crate::operator::fixtures::{controlled_by, worker_object};
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, _, _, send) = handle.next().await;
            send.send_response(respond(
                200,
                with_uid(resource("Transport", "erp", 1, json!({})), "uid-erp"),
            ));
            let (_, _, _, send) = handle.next().await;
            send.send_response(respond(
                200,
                worker_object(
                    "secrets",
                    "ferry-tp-erp-admin",
                    controlled_by("someone-else"),
                ),
            ));
            assert!(handle.next_request().await.is_none(), "no worker call");
        });
        let error = run(
            &cli("kubectl-ferry queue transport erp"),
            client,
            "plant-a",
            Duration::from_millis(1),
        )
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot reach the worker of Transport plant-a/erp: the Secret ferry-tp-erp-admin is not controlled by it"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn logs_read_the_worker_container() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(
                path.ends_with("/namespaces/plant-a/connections/crm"),
                "{path}"
            );
            send.send_response(respond(
                200,
                with_uid(resource("Connection", "crm", 1, json!({})), "uid-crm"),
            ));
            let (_, path, _, send) = handle.next().await;
            assert_eq!(
                path,
                "/api/v1/namespaces/plant-a/pods/ferry-conn-crm-0/log?&container=worker&previous=true&tailLines=5"
            );
            send.send_response(
                http::Response::builder()
                    .status(200)
                    .body(kube::client::Body::from(b"iteration 7 done\n".to_vec()))
                    .unwrap(),
            );
        });
        let out = run(
            &cli("kubectl-ferry logs conn crm --previous --tail 5"),
            client,
            "plant-a",
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        assert_eq!(out, "iteration 7 done\n");
        server.await.unwrap();
    }

    /// With no operator running nothing ever writes a status: the wait says so and where to
    /// look, instead of "without a status" alone.
    #[tokio::test]
    async fn a_wait_on_a_resource_without_status_says_no_operator_wrote_one() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            while let Some((_, send)) = handle.next_request().await {
                send.send_response(respond(200, resource("Transport", "erp", 2, json!(null))));
            }
        });
        let command = cli("kubectl-ferry suspend transport erp --wait --timeout 30ms");
        let error = run(&command, client, "plant-a", Duration::from_millis(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("is without a status"), "{error}");
        assert!(
            error.contains("no ferry operator has written one"),
            "{error}"
        );
        assert!(
            error.contains("docs/troubleshooting.md#no-status"),
            "{error}"
        );
        server.abort();
    }

    /// An API error (a pod that does not exist) is one readable line, not kube's debug form.
    #[tokio::test]
    async fn logs_of_a_missing_pod_say_so_in_one_line() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, _, _, send) = handle.next().await;
            send.send_response(respond(
                200,
                with_uid(resource("Connection", "crm", 1, json!({})), "uid-crm"),
            ));
            let (_, _, _, send) = handle.next().await;
            send.send_response(respond(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                       "reason": "NotFound", "message": "pods \"ferry-conn-crm-0\" not found"}),
            ));
        });
        let error = run(
            &cli("kubectl-ferry logs conn crm"),
            client,
            "plant-a",
            Duration::from_millis(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "the API server refused: pods \"ferry-conn-crm-0\" not found (404 NotFound)"
        );
        server.await.unwrap();
    }

    #[test]
    fn a_resource_without_status_is_explained_in_the_table() {
        let transport: crate::api::Transport =
            serde_json::from_value(resource("Transport", "erp", 1, json!(null))).unwrap();
        let row = table::transport_row(&transport, k8s_openapi::jiff::Timestamp::now());
        assert_eq!(
            (row.state.as_str(), row.ready.as_str()),
            ("Pending", "Unknown")
        );
        assert_eq!(row.message, table::NO_STATUS);
    }

    #[test]
    fn an_empty_queue_has_no_table() {
        let out = worker::render_queue(
            "Transport plant-a/erp",
            &serde_json::from_value(json!({"transport": "plant-a/erp", "state": "Up",
                "messages": 0, "bytes": 0, "oldestAgeSeconds": 0, "oldest": []}))
            .unwrap(),
        );
        assert_eq!(
            out,
            "Transport plant-a/erp: Up\nqueue: 0 transactions, 0 bytes, empty\n"
        );
    }
}
