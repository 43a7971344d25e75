//! Why a reconcile failed: one variant per step of the skeleton in `reconcile.rs`, each
//! keeping its source. `category()` names the step for the errors metric and the
//! `ReconcileFailed` Event.

use crate::operator::{objects::builders::BuildError, runtime::context::FINALIZER};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "cannot {action} the finalizer {FINALIZER}: {}",
        crate::kube_error_line(source)
    )]
    Finalizer {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the object has no name or an invalid finalizer list; it cannot be reconciled")]
    Unreconcilable,
    #[error("cannot read {what}: {}", crate::kube_error_line(source))]
    Dereference {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(
        "the workers' CA is not ready yet (--worker-tls): the operator makes or reads it in its own namespace when it starts; its log says why it could not"
    )]
    NoCa,
    #[error("cannot issue the worker's certificate: {0}")]
    Certificate(#[from] crate::operator::objects::certificates::CertificateError),
    #[error("cannot apply the {object}: {}", crate::kube_error_line(source))]
    Apply {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "a {kind} named {name} already exists in namespace {namespace} and is not controlled by {owner}; ferry leaves it as it is: delete or rename it, or rename the resource"
    )]
    NameConflict {
        kind: &'static str,
        name: String,
        namespace: String,
        owner: String,
    },
    #[error(
        "the WorkerPool {pool} is still named by {users} resource(s) (its status lists them); it is deleted once none does"
    )]
    InUse { pool: String, users: usize },
    #[error("cannot remove it from its pool worker {worker}: {why}")]
    LeavePool { worker: String, why: String },
    #[error("cannot write the status: {}", crate::kube_error_line(source))]
    Status {
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot delete the volume claim {claim}: {}",
        crate::kube_error_line(source)
    )]
    Cleanup {
        claim: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// The step's own error when it failed inside the finalizer's apply or cleanup; the
    /// finalizer's own failures otherwise.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<ReconcileError>) -> Self {
        use kube::runtime::finalizer::Error;
        match e {
            Error::ApplyFailed(inner) | Error::CleanupFailed(inner) => inner,
            Error::AddFinalizer(source) => ReconcileError::Finalizer {
                action: "add",
                source,
            },
            Error::RemoveFinalizer(source) => ReconcileError::Finalizer {
                action: "remove",
                source,
            },
            Error::UnnamedObject | Error::InvalidFinalizer => ReconcileError::Unreconcilable,
        }
    }

    /// The step that failed: the `error` label of `ferry_operator_reconcile_errors_total` and
    /// the start of the `ReconcileFailed` Event's note.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Finalizer { .. } | ReconcileError::Unreconcilable => "finalizer",
            ReconcileError::Dereference { .. } => "dereference",
            ReconcileError::Build(_) | ReconcileError::NoCa | ReconcileError::Certificate(_) => {
                "build"
            }
            ReconcileError::Apply { .. } => "apply",
            ReconcileError::NameConflict { .. } => "conflict",
            ReconcileError::Status { .. } => "status",
            ReconcileError::Cleanup { .. }
            | ReconcileError::InUse { .. }
            | ReconcileError::LeavePool { .. } => "cleanup",
        }
    }
}
