//! `kubectl ferry rotate-token transport NAME [--admin]`: a new ingest token for a transport's
//! producers, or a new admin token for its worker. The Secret is deleted (only when the
//! transport controls it); the operator makes a new one with a new token. The worker is told a
//! new ingest token's hash and from then on refuses the old one; a new admin token restarts the
//! worker, which reads it when it starts. The queue and totals are the worker's and are not
//! touched (docs/security.md#rotation).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
};

use super::desired::PluginError;
use crate::{
    api::Transport,
    operator::objects::builders::{
        ADMIN_TOKEN_KEY, INGEST_TOKEN_KEY, admin_secret_name, worker_name,
    },
};

/// Which token is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The producers' (`ferry-tp-<name>`).
    Ingest,
    /// The worker's admin token (`ferry-tp-<name>-admin`).
    Admin,
}

/// Replace transport `name`'s ingest or admin token; answers what was done once the new Secret
/// exists (waiting at most `limit`, looking every `poll`).
pub async fn rotate_token(
    client: kube::Client,
    namespace: &str,
    name: &str,
    token: Token,
    limit: Duration,
    poll: Duration,
) -> Result<String, PluginError> {
    let not_found = |kind: &str, name: &str| PluginError::NotFound {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    };
    let transport = Api::<Transport>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| not_found("Transport", name))?;
    if token == Token::Admin
        && let Some(pool) = &transport.spec.worker_pool
    {
        return Err(PluginError::PooledAdmin {
            transport: format!("{namespace}/{name}"),
            pool: pool.clone(),
        });
    }
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let (secret_name, key) = match token {
        Token::Ingest => (worker_name("tp", name), INGEST_TOKEN_KEY),
        Token::Admin => (admin_secret_name(&worker_name("tp", name)), ADMIN_TOKEN_KEY),
    };
    let secret = secrets
        .get_opt(&secret_name)
        .await?
        .ok_or_else(|| not_found("Secret", &secret_name))?;
    let controlled = secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == transport.metadata.uid.as_ref());
    if !controlled {
        return Err(PluginError::NotOurs {
            what: format!("Secret {namespace}/{secret_name}"),
            owner: format!("Transport {namespace}/{name}"),
        });
    }
    let old = secret.metadata.uid.clone();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: old.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    secrets.delete(&secret_name, &params).await?;
    let started = Instant::now();
    loop {
        if let Some(new) = secrets.get_opt(&secret_name).await?
            && new.metadata.uid != old
            && new.data.as_ref().is_some_and(|d| d.contains_key(key))
        {
            return Ok(match token {
                Token::Ingest => format!(
                    "transport/{name}: a new ingest token is in Secret {secret_name}; the worker \
                     refuses the old one as soon as the operator has told it the new one \
                     (seconds); producers read the Secret again"
                ),
                Token::Admin => format!(
                    "transport/{name}: a new admin token is in Secret {secret_name}; the worker \
                     restarts with it (its queue kept)"
                ),
            });
        }
        if started.elapsed() >= limit {
            return Err(PluginError::NoNewSecret {
                secret: format!("{namespace}/{secret_name}"),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}
