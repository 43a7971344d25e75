//! Writing `.status`: server-side apply as the operator's one field manager, so what the
//! operator no longer sets (a startup queue position, a sync-set's last error) disappears,
//! which a merge patch would leave behind.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::operator::{
    NamespacedObject, runtime::context::FIELD_MANAGER, runtime::error::ReconcileError,
};

pub(in crate::operator) async fn write_status<K>(
    client: &kube::Client,
    object: &K,
    namespace: &str,
    status: &impl serde::Serialize,
) -> Result<(), ReconcileError>
where
    K: NamespacedObject,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), namespace)
        .patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|source| ReconcileError::Status { source })?;
    Ok(())
}
