//! `spec.network` of a Transport or WorkerPool: who may reach its worker's port. The operator
//! turns it into the worker's NetworkPolicy (docs/security.md#network-policies).
//!
//! A peer is a NetworkPolicyPeer with its lists and strings bounded, so that the API server
//! can check every `ipBlock` for CIDRs within its validation cost budget (the upstream type
//! bounds nothing) and refuse what a NetworkPolicy would refuse later.

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicyPeer},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Who may connect to the worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// The producers allowed to connect to the worker's port (as a NetworkPolicy's ingress
    /// `from`: pods by namespace and labels, or address ranges). Unset: every pod of the
    /// resource's own namespace; empty: none. The operator and the ferry workers of the same
    /// namespace are always allowed; the ingest token still decides what a peer may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub ingest_from: Option<Vec<Peer>>,
}

/// One peer: pods (`namespaceSelector` and/or `podSelector`) or an `ipBlock`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ipBlock) != (has(self.namespaceSelector) || has(self.podSelector))").message("a peer is either an ipBlock or pods (namespaceSelector and/or podSelector)"))]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// An address range, less some ranges within it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    /// `10.0.0.0/8`, `fd00::/8`.
    pub cidr: Cidr,
    /// Ranges within `cidr` that are not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub except: Vec<Cidr>,
}

/// An address range: `10.0.0.0/8`, `fd00::/8`. Checked by the API server with `isCIDR` on each
/// string (a rule on the list would cost a comprehension per entry).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cidr(pub String);

impl schemars::JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            // The longest IPv6 CIDR: 39 characters of address, "/128".
            "maxLength": 43,
            "x-kubernetes-validations": [{
                "rule": "isCIDR(self)",
                "message": "must be a CIDR (10.0.0.0/8, fd00::/8)",
            }],
        })
    }
}

impl From<&Peer> for NetworkPolicyPeer {
    fn from(peer: &Peer) -> Self {
        NetworkPolicyPeer {
            namespace_selector: peer.namespace_selector.clone(),
            pod_selector: peer.pod_selector.clone(),
            ip_block: peer.ip_block.as_ref().map(|block| IPBlock {
                cidr: block.cidr.0.clone(),
                except: (!block.except.is_empty())
                    .then(|| block.except.iter().map(|c| c.0.clone()).collect()),
            }),
        }
    }
}
