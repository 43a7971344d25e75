//! The operator's objects for the example manifests, written to `target/tmp/rendered/` so that
//! `.ci/run` can check them against Kubernetes' own schemas (kubernetes-validate --strict).

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use ferry::{
    api::{
        manifest::parse_documents,
        validate::{ManifestValidator, Resource},
    },
    destinations::Forbidden,
    operator::{
        objects::builders::{Owner, WorkerDefaults, WorkerTls, WorkerTokens},
        objects::certificates::{CaState, CertificatePolicy, mint_ca, unix_now, worker_names},
        objects::network_policy::WorkerNetworkPolicies,
    },
};

#[test]
fn render_the_examples_workers() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rendered");
    std::fs::create_dir_all(&out).unwrap();
    let validator = ManifestValidator::new();
    // With TLS, as in a cluster: a certificate from the operator's CA, the bundle beside it.
    let policy = CertificatePolicy::default();
    let ca = CaState::step(None, unix_now(), &policy, |now| {
        mint_ca(now, policy.ca_validity)
    })
    .unwrap()
    .unwrap();
    let tokens = WorkerTokens {
        admin: "admin".into(),
        ingest: "ingest".into(),
        tls: Some(WorkerTls {
            issued: ca
                .issuer()
                .unwrap()
                .issue(
                    &worker_names("ferry-tp-erp", "default"),
                    unix_now(),
                    &policy,
                )
                .unwrap(),
            bundle: ca.bundle(),
        }),
    };
    let mut rendered = 0;
    for example in [
        "transport-erp.yaml",
        "connection-crm-orders.yaml",
        "minimal.yaml",
        "suspended-byte-counts.yaml",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/examples/{example}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        for doc in parse_documents(&text).unwrap() {
            let mut resource = validator.validate(&doc).unwrap();
            let objects = match &mut resource {
                Resource::Transport(t) => {
                    t.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
                    let owner = Owner::transport(t).unwrap();
                    render(&owner, &tokens)
                }
                Resource::Connection(c) => {
                    c.metadata.uid = Some("00000000-0000-0000-0000-000000000002".into());
                    let owner = Owner::connection(c).unwrap();
                    render(&owner, &tokens)
                }
            };
            for (name, yaml) in objects {
                std::fs::write(out.join(name), yaml).unwrap();
                rendered += 1;
            }
        }
    }
    assert_eq!(
        rendered, 30,
        "five objects for each of the six example resources"
    );
}

/// The operator's defaults with NetworkPolicies on (as in a cluster), a forbidden range of
/// each family and a scraper allowed to every worker.
fn defaults() -> WorkerDefaults {
    let mut policies = WorkerNetworkPolicies::new(
        "ferry-system",
        [(
            "app.kubernetes.io/component".to_owned(),
            "operator".to_owned(),
        )]
        .into(),
    );
    policies.forbidden = Forbidden::parse("10.0.0.0/8,fd00::/8,127.0.0.0/8").unwrap();
    policies.ingress_from = serde_json::from_str(
        r#"[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]"#,
    )
    .unwrap();
    WorkerDefaults {
        network_policies: Some(policies),
        tls: true,
        ..WorkerDefaults::default()
    }
}

fn render(owner: &Owner, tokens: &WorkerTokens) -> Vec<(String, String)> {
    let name = owner.worker_name();
    let policy = owner.network_policy(&defaults()).expect("policies are on");
    vec![
        (
            format!("{name}-networkpolicy.yaml"),
            serde_norway::to_string(&policy).unwrap(),
        ),
        (
            format!("{name}-statefulset.yaml"),
            serde_norway::to_string(&owner.stateful_set_for(&defaults(), tokens)).unwrap(),
        ),
        (
            format!("{name}-service.yaml"),
            serde_norway::to_string(&owner.service()).unwrap(),
        ),
        (
            format!("{name}-secret.yaml"),
            serde_norway::to_string(&owner.secret(tokens)).unwrap(),
        ),
        (
            format!("{name}-admin-secret.yaml"),
            serde_norway::to_string(&owner.admin_secret(tokens).expect("a dedicated worker"))
                .unwrap(),
        ),
    ]
}
