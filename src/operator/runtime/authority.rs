//! The operator's CA as the leader keeps it: read from (or made into) the Secret
//! `certificates::CA_SECRET` of the operator's namespace at the start of its lead, stepped
//! when its renewal calls for it (`CaState::step`), and published as the ConfigMap of the same
//! name, key `ca.crt`, in each namespace with ferry resources. Reconciles read the current CA
//! from here to issue and check workers' certificates; the operator's own worker client
//! trusts its bundle.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};

use crate::operator::objects::certificates::{
    BUNDLE_KEY, CA_SECRET, CaState, CertificateError, CertificatePolicy, STATE_KEY, SigningCa,
    mint_ca, unix_now,
};

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(
        "cannot read the Secret {namespace}/{CA_SECRET}: {}",
        crate::kube_error_line(source)
    )]
    Read {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot write the Secret {namespace}/{CA_SECRET}: {}",
        crate::kube_error_line(source)
    )]
    Write {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

/// The CA as it is now.
pub struct Current {
    pub state: CaState,
    pub signing: SigningCa,
    /// What clients trust (PEM).
    pub bundle: String,
}

/// The CA of one operator: its Secret's namespace, its policy, what it holds now, and which
/// namespaces' ConfigMaps show that bundle already.
pub struct Authority {
    namespace: String,
    pub policy: CertificatePolicy,
    current: RwLock<Option<Arc<Current>>>,
    published: Mutex<HashMap<String, String>>,
}

impl Authority {
    pub fn new(namespace: &str, policy: CertificatePolicy) -> Self {
        Self {
            namespace: namespace.to_owned(),
            policy,
            current: RwLock::new(None),
            published: Mutex::new(HashMap::new()),
        }
    }

    /// The CA now; `None` before the first [`Authority::ensure`].
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read the CA's Secret, make or step the CA as its policy says and write it back when it
    /// changed (with the resourceVersion read: a concurrent writer makes this fail and retry).
    /// Answers whether the bundle changed since the last call.
    pub async fn ensure(&self, client: &kube::Client) -> Result<bool, AuthorityError> {
        // Another operator (a replica taking over, or one of another namespace sharing this
        // one) wrote it in between: read it again, a few times.
        let mut attempts = 0;
        loop {
            match self.ensure_once(client).await {
                Err(AuthorityError::Write {
                    source: kube::Error::Api(e),
                    ..
                }) if e.code == 409 && attempts < 5 => attempts += 1,
                outcome => return outcome,
            }
        }
    }

    async fn ensure_once(&self, client: &kube::Client) -> Result<bool, AuthorityError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let read = |source| AuthorityError::Read {
            namespace: self.namespace.clone(),
            source,
        };
        let write = |source| AuthorityError::Write {
            namespace: self.namespace.clone(),
            source,
        };
        let existing = secrets.get_opt(CA_SECRET).await.map_err(read)?;
        let stored = existing
            .as_ref()
            .map(|secret| {
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(STATE_KEY))
                    .map(|b| b.0.as_slice())
                    .unwrap_or_default();
                CaState::parse(bytes)
            })
            .transpose()?;
        let validity = self.policy.ca_validity;
        let stepped = CaState::step(stored.as_ref(), unix_now(), &self.policy, |now| {
            mint_ca(now, validity)
        })?;
        let state = match (stepped, stored) {
            (None, Some(stored)) => stored,
            // `step` makes a CA whenever there was none.
            (None, None) => {
                return Err(CertificateError::Unreadable("no CA was made".into()).into());
            }
            (Some(state), _) => {
                let secret = self.secret(&state, existing.as_ref());
                match &existing {
                    None => secrets.create(&PostParams::default(), &secret).await,
                    Some(_) => {
                        secrets
                            .replace(CA_SECRET, &PostParams::default(), &secret)
                            .await
                    }
                }
                .map_err(write)?;
                tracing::info!(
                    signing = %state.signing.name,
                    next = ?state.next.as_ref().map(|ca| &ca.name),
                    trusted = 1 + state.next.is_some() as usize + state.retired.len(),
                    "the workers' CA changed"
                );
                state
            }
        };
        let changed = self.current().is_none_or(|current| {
            current.bundle != state.bundle() || current.signing.name != state.signing.name
        });
        if changed {
            let current = Current {
                signing: state.issuer()?,
                bundle: state.bundle(),
                state,
            };
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(current));
        }
        Ok(changed)
    }

    fn secret(&self, state: &CaState, existing: Option<&Secret>) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(self.namespace.clone()),
                resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
                labels: Some(labels()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    (
                        STATE_KEY.to_owned(),
                        bytes(&serde_json::to_string(state).unwrap_or_default()),
                    ),
                    (BUNDLE_KEY.to_owned(), bytes(&state.bundle())),
                ]
                .into(),
            ),
            ..Secret::default()
        }
    }

    /// How long until [`Authority::ensure`] has something to do (at most an hour: a Secret
    /// changed by hand is seen within it).
    pub fn next_check(&self) -> Duration {
        const AT_MOST: Duration = Duration::from_secs(3600);
        self.current().map_or(Duration::from_secs(30), |current| {
            let at = current.state.next_step_at(&self.policy);
            Duration::from_secs((at - unix_now()).max(1) as u64).min(AT_MOST)
        })
    }

    /// Keep the CA stepped until `halted`; `changed` is called after each change of its
    /// bundle or signer (every resource is then reconciled: new certificates, new bundles).
    pub async fn keep(
        self: Arc<Self>,
        client: kube::Client,
        halted: tokio::sync::watch::Receiver<bool>,
        changed: impl Fn() + Send,
    ) {
        let mut halted = halted;
        loop {
            let wait = self.next_check();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = halted.wait_for(|h| *h) => return,
            }
            match self.ensure(&client).await {
                Ok(true) => changed(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot keep the workers' CA; trying again in 30 s");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    }

    /// Make sure the ConfigMap `ferry-ca` of `namespace` holds the bundle: applied once per
    /// namespace and bundle by this operator (a ConfigMap edited by hand is repaired at the next
    /// bundle or operator start). Not forced: a ConfigMap of that name whose `ca.crt` somebody
    /// else manages is left as it is (the apply conflicts).
    pub async fn publish(&self, client: &kube::Client, namespace: &str) -> Result<(), kube::Error> {
        let Some(current) = self.current() else {
            return Ok(());
        };
        let hash = crate::stable_hash_hex(&current.bundle, 8);
        if self.published_lock().get(namespace) == Some(&hash) {
            return Ok(());
        }
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels()),
                ..ObjectMeta::default()
            },
            data: Some([(BUNDLE_KEY.to_owned(), current.bundle.clone())].into()),
            ..ConfigMap::default()
        };
        Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .patch(
                CA_SECRET,
                &PatchParams::apply(crate::operator::runtime::context::FIELD_MANAGER),
                &Patch::Apply(map),
            )
            .await?;
        self.published_lock().insert(namespace.to_owned(), hash);
        Ok(())
    }

    fn published_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn labels() -> std::collections::BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name".to_owned(), "ferry".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "ca".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "ferry-operator".to_owned(),
        ),
    ]
    .into()
}
