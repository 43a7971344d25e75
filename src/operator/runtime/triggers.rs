//! Reconcile requests by kind, from outside a controller's own watch: a worker object the
//! resource controls changed or went away (`run.rs`), or its worker's report changed
//! (`report_watch.rs`). Each controller subscribes to its kind once; a request for a kind
//! nobody subscribed to (as in tests) goes nowhere.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::channel::mpsc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[derive(Debug, Default)]
pub struct Triggers {
    routes: Mutex<HashMap<&'static str, mpsc::UnboundedSender<(String, String)>>>,
}

impl Triggers {
    fn routes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<&'static str, mpsc::UnboundedSender<(String, String)>>>
    {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The requests for `kind`, as (namespace, name).
    pub fn subscribe(&self, kind: &'static str) -> mpsc::UnboundedReceiver<(String, String)> {
        let (sender, receiver) = mpsc::unbounded();
        self.routes().insert(kind, sender);
        receiver
    }

    /// Reconcile the `kind` object `namespace/name`.
    pub fn send(&self, kind: &str, namespace: &str, name: &str) {
        if let Some(route) = self.routes().get(kind) {
            let _ = route.unbounded_send((namespace.to_owned(), name.to_owned()));
        }
    }

    /// `object` changed: the ferry resource that controls it is reconciled.
    pub fn owner_of(&self, object: &ObjectMeta) {
        let namespace = object.namespace.as_deref().unwrap_or_default();
        for owner in object.owner_references.iter().flatten() {
            if owner.controller == Some(true) && owner.api_version == crate::api::API_VERSION {
                self.send(&owner.kind, namespace, &owner.name);
            }
        }
    }
}

/// Shared by the watches, the report watchers and the controllers.
pub type SharedTriggers = Arc<Triggers>;
