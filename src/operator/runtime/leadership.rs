//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! both write: a standby replica waits for the lease, and a leader that loses it stops (the
//! process exits and restarts as a standby, as controller-runtime's operators do).

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};

/// How long a lease stays valid without renewal, and how long before that the holder renews.
const LEASE_SECONDS: u64 = 15;
const RENEW_BEFORE_SECONDS: u64 = 5;

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica, as written in the Lease's `holderIdentity` (the pod name in cluster).
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot take part in leader election through Lease {namespace}/{name}: {source}")]
pub struct LeaseError {
    namespace: String,
    name: String,
    #[source]
    source: LeaseManagerError,
}

/// The Lease's field manager for this replica. It must differ between replicas: the lease
/// manager takes the lease with a server-side apply, and only a conflict between two field
/// managers tells a replica that another holds it (with one shared name, two replicas started
/// together both took it and both led). At most 128 characters, the API server's limit.
fn field_manager(identity: &str) -> String {
    format!(
        "{}-{identity}",
        crate::operator::runtime::context::FIELD_MANAGER
    )
    .chars()
    .take(128)
    .collect()
}

pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Start competing for the lease (created if it does not exist).
    pub async fn campaign(
        client: kube::Client,
        options: &LeaseOptions,
    ) -> Result<Self, LeaseError> {
        let manager = LeaseManagerBuilder::new(client, &options.name)
            .with_namespace(&options.namespace)
            .with_identity(&options.identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_BEFORE_SECONDS)
            .with_field_manager(field_manager(&options.identity))
            .build()
            .await
            .map_err(|source| LeaseError {
                namespace: options.namespace.clone(),
                name: options.name.clone(),
                source,
            })?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Wait until this replica holds the lease; false if the election ended first.
    pub async fn acquired(&mut self) -> bool {
        self.leading.wait_for(|leading| *leading).await.is_ok()
    }

    /// A receiver that turns false when the lease is lost.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Give the lease up so a standby takes over at once rather than after it expires.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot release the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader lease took too long; it will expire"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_applies_the_lease_as_its_own_field_manager() {
        let (a, b) = (
            field_manager("ferry-operator-7d9c-abcde"),
            field_manager("ferry-operator-7d9c-fghij"),
        );
        assert_ne!(a, b);
        assert!(
            a.starts_with(crate::operator::runtime::context::FIELD_MANAGER),
            "{a}"
        );
        assert!(field_manager(&"x".repeat(300)).chars().count() <= 128);
    }
}
