//! The NetworkPolicy the operator makes for each worker (dedicated or pool), on by default
//! (`--worker-network-policies`): who may reach the worker's port, and where the worker may
//! connect. docs/security.md#network-policies.
//!
//! - **Ingress**, to the worker's port only: the operator's pods, the ferry workers of the
//!   same namespace (connection workers deliver into transports), the resource's producers
//!   (`spec.network.ingestFrom`, default every pod of its namespace; none for a Connection,
//!   which has no producers) and the peers the operator is given for every worker
//!   (`--worker-ingress-from`: scrapers of `/metrics`, the API server with proxy access).
//! - **Egress**: DNS; the ferry workers of the same namespace; any other address except the
//!   link-local range (the cloud metadata service) and the forbidden destinations.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
        NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::{
    api::network::Peer,
    destinations::{Forbidden, LINK_LOCAL},
};

/// What every worker's NetworkPolicy is made of besides its own resource.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerNetworkPolicies {
    /// The operator's pods (its namespace and labels).
    pub operator: NetworkPolicyPeer,
    /// More peers allowed to every worker's port.
    pub ingress_from: Vec<NetworkPolicyPeer>,
    /// Ranges workers may never connect to (besides link-local, always excluded).
    pub forbidden: Forbidden,
}

impl WorkerNetworkPolicies {
    /// The operator in `namespace`, its pods selected by `labels`.
    pub fn new(namespace: &str, labels: BTreeMap<String, String>) -> Self {
        Self {
            operator: NetworkPolicyPeer {
                namespace_selector: Some(namespace_named(namespace)),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(labels),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            },
            ingress_from: Vec::new(),
            forbidden: Forbidden::default(),
        }
    }
}

/// Who produces into a worker.
#[derive(Clone, Copy, Debug)]
pub enum Producers<'a> {
    /// Every pod of the resource's namespace (`spec.network.ingestFrom` unset).
    OwnNamespace,
    /// These peers (`spec.network.ingestFrom`; empty: nobody besides the operator and workers).
    These(&'a [Peer]),
    /// None: a Connection's worker takes no transactions.
    Nobody,
}

/// The policy's spec for the worker pods selected by `pods`, listening on `port`.
pub fn worker_policy(
    settings: &WorkerNetworkPolicies,
    pods: BTreeMap<String, String>,
    producers: Producers<'_>,
    port: u16,
) -> NetworkPolicySpec {
    let tcp = |port: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    let mut from = vec![settings.operator.clone(), ferry_workers()];
    match producers {
        Producers::OwnNamespace => from.push(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }),
        Producers::These(peers) => from.extend(peers.iter().map(NetworkPolicyPeer::from)),
        Producers::Nobody => {}
    }
    from.extend(settings.ingress_from.iter().cloned());
    let dns = NetworkPolicyEgressRule {
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some(protocol.into()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
        to: None,
    };
    let workers = NetworkPolicyEgressRule {
        ports: Some(vec![tcp(port)]),
        to: Some(vec![ferry_workers()]),
    };
    let anywhere_else = NetworkPolicyEgressRule {
        ports: None,
        to: Some(anywhere_but(&settings.forbidden)),
    };
    NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some(pods),
            ..LabelSelector::default()
        }),
        policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
        ingress: Some(vec![NetworkPolicyIngressRule {
            ports: Some(vec![tcp(port)]),
            from: Some(from),
        }]),
        egress: Some(vec![dns, workers, anywhere_else]),
    }
}

/// The ferry workers of the policy's namespace.
fn ferry_workers() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".into(),
                    "ferry-operator".into(),
                ),
                ("app.kubernetes.io/component".into(), "worker".into()),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn namespace_named(namespace: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".into(),
            namespace.into(),
        )])),
        ..LabelSelector::default()
    }
}

/// Every IPv4 and IPv6 address but link-local and the `forbidden` ranges.
fn anywhere_but(forbidden: &Forbidden) -> Vec<NetworkPolicyPeer> {
    let link_local = Forbidden::parse(LINK_LOCAL).expect("the built-in ranges are CIDRs");
    let mut excluded: Vec<IpNet> = link_local.ranges().to_vec();
    for range in forbidden.ranges() {
        if !excluded.iter().any(|e| e.contains(range)) {
            excluded.push(*range);
        }
    }
    let block = |all: &str, v4: bool| {
        let except: Vec<String> = excluded
            .iter()
            .filter(|r| matches!(r, IpNet::V4(_)) == v4)
            .map(IpNet::to_string)
            .collect();
        NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: all.into(),
                except: (!except.is_empty()).then_some(except),
            }),
            ..NetworkPolicyPeer::default()
        }
    };
    vec![block("0.0.0.0/0", true), block("::/0", false)]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(forbidden: &str) -> WorkerNetworkPolicies {
        let mut settings = WorkerNetworkPolicies::new(
            "ferry-system",
            BTreeMap::from([("app.kubernetes.io/component".into(), "operator".into())]),
        );
        settings.forbidden = Forbidden::parse(forbidden).expect("CIDRs");
        settings
    }

    fn pods() -> BTreeMap<String, String> {
        BTreeMap::from([("app.kubernetes.io/instance".into(), "ferry-tp-erp".into())])
    }

    #[test]
    fn the_metadata_range_is_never_reachable_whatever_is_forbidden() {
        for forbidden in ["", "169.254.0.0/16", "127.0.0.0/8,10.0.0.0/8,fd00::/8"] {
            let spec = worker_policy(&settings(forbidden), pods(), Producers::OwnNamespace, 8080);
            let egress = serde_json::to_value(&spec.egress).expect("JSON");
            let v4 = &egress[2]["to"][0]["ipBlock"];
            assert_eq!(v4["cidr"], "0.0.0.0/0");
            let except: Vec<&str> = v4["except"]
                .as_array()
                .expect("except")
                .iter()
                .filter_map(|e| e.as_str())
                .collect();
            assert_eq!(
                except.iter().filter(|e| **e == "169.254.0.0/16").count(),
                1,
                "{forbidden}: {except:?}"
            );
            for range in forbidden.split(',').filter(|r| r.contains('.')) {
                assert!(except.contains(&range), "{forbidden}: {except:?}");
            }
            let v6 = &egress[2]["to"][1]["ipBlock"];
            assert_eq!(v6["cidr"], "::/0");
            assert!(v6["except"].to_string().contains("fe80::/10"));
        }
    }

    #[test]
    fn producers_default_to_the_namespace_and_a_connection_has_none() {
        let peers = |producers| {
            let spec = worker_policy(&settings(""), pods(), producers, 8080);
            serde_json::to_value(&spec.ingress).expect("JSON")[0].clone()
        };
        let own = peers(Producers::OwnNamespace);
        assert_eq!(own["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
        let from = own["from"].as_array().expect("from");
        // The operator, the namespace's workers, every pod of the namespace.
        assert_eq!(from.len(), 3, "{own}");
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "ferry-system"
        );
        assert_eq!(from[2], json!({"podSelector": {}}));
        assert_eq!(
            peers(Producers::Nobody)["from"].as_array().map(Vec::len),
            Some(2)
        );
        let producer = Peer {
            namespace_selector: Some(namespace_named("plant-a")),
            ..Peer::default()
        };
        let named = peers(Producers::These(std::slice::from_ref(&producer)));
        assert_eq!(
            named["from"][2]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "plant-a"
        );
    }
}
