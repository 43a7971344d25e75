//! The operator's certificate authority and the workers' serving certificates (TLS on every
//! worker listener, docs/security.md "TLS inside the cluster").
//!
//! The CA is made once and kept in the Secret [`CA_SECRET`] of the operator's namespace
//! (`state.json`: every CA certificate still valid, and the keys of the one that signs and of
//! the one waiting to; `ca.crt`: the bundle clients trust). It is renewed with an overlap, so
//! that no client holding the bundle breaks:
//!
//! 1. `renew_before` ahead of the signing CA's expiry a new CA is made; the bundle holds both
//!    from then on, while workers' certificates are still issued by the old one;
//! 2. halfway through that window the new CA signs, and every worker gets a new certificate
//!    from it (the old CA stays in the bundle until it expires);
//! 3. an expired CA leaves the bundle.
//!
//! A client that refreshes the bundle at any time in the first half never sees a certificate
//! it cannot verify. [`CaState::step`] is that state machine, pure (the clock and the key maker
//! are its arguments), with its table tests below.
//!
//! A worker's certificate ([`Issued`]) names its Service (a pool's: every worker's stable
//! name, by wildcard) and is kept in the Secret only the operator reads (a dedicated worker's
//! admin Secret, a pool's Secret), with an annotation saying when it expires, who issued it
//! and for which names, so that it is reissued exactly when one of the three calls for it.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// The CA's Secret, in the operator's namespace.
pub const CA_SECRET: &str = "ferry-ca";
/// The key of the whole state in [`CA_SECRET`].
pub const STATE_KEY: &str = "state.json";
/// The key of the CA bundle: in [`CA_SECRET`], in producers' Secrets and in the ConfigMap
/// [`CA_SECRET`] of each namespace with ferry resources.
pub const BUNDLE_KEY: &str = "ca.crt";
/// A worker's certificate and key, in the Secret only the operator reads.
pub const CERT_KEY: &str = "tls.crt";
pub const PRIVATE_KEY_KEY: &str = "tls.key";
/// On that Secret: [`CertInfo`] of the certificate in it.
pub const CERT_ANNOTATION: &str = "ferry.dev/certificate";
/// The cluster's DNS domain, in the long form of a worker's names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error(
        "the Secret {CA_SECRET} does not hold a CA ferry can read ({0}); delete it to make a new CA (every worker then gets a new certificate, and clients need the new ca.crt)"
    )]
    Unreadable(String),
    #[error("{0}")]
    Policy(String),
}

/// How long certificates live and when they are renewed (`--ca-validity` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertificatePolicy {
    pub ca_validity: Duration,
    /// A new CA is made this long before the signing one expires; it signs from halfway.
    pub ca_renew_before: Duration,
    pub cert_validity: Duration,
    /// A worker's certificate is reissued this long before it expires.
    pub cert_renew_before: Duration,
}

const DAY: u64 = 24 * 3600;

impl Default for CertificatePolicy {
    fn default() -> Self {
        Self {
            ca_validity: Duration::from_secs(3 * 365 * DAY),
            ca_renew_before: Duration::from_secs(180 * DAY),
            cert_validity: Duration::from_secs(90 * DAY),
            cert_renew_before: Duration::from_secs(30 * DAY),
        }
    }
}

impl CertificatePolicy {
    /// The policy, when it can work: a certificate renewed before it is made (or a CA whose
    /// handover comes after a worker certificate would need renewing from it) would be
    /// reissued on every pass.
    pub fn new(
        ca_validity: Duration,
        ca_renew_before: Duration,
        cert_validity: Duration,
        cert_renew_before: Duration,
    ) -> Result<Self, CertificateError> {
        let policy = Self {
            ca_validity,
            ca_renew_before,
            cert_validity,
            cert_renew_before,
        };
        if ca_renew_before >= ca_validity {
            return Err(CertificateError::Policy(format!(
                "--ca-renew-before ({}) must be shorter than --ca-validity ({})",
                secs(ca_renew_before),
                secs(ca_validity)
            )));
        }
        if cert_renew_before >= cert_validity {
            return Err(CertificateError::Policy(format!(
                "--cert-renew-before ({}) must be shorter than --cert-validity ({})",
                secs(cert_renew_before),
                secs(cert_validity)
            )));
        }
        if cert_renew_before >= ca_renew_before / 2 {
            return Err(CertificateError::Policy(format!(
                "--cert-renew-before ({}) must be shorter than half of --ca-renew-before ({}): a new CA signs from halfway through that window",
                secs(cert_renew_before),
                secs(ca_renew_before)
            )));
        }
        Ok(policy)
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One CA certificate; `key` only for one that signs or will.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCert {
    /// Its subject's common name, unique per CA (`ferry CA <unix time> <random>`).
    pub name: String,
    pub not_before: i64,
    pub not_after: i64,
    pub cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What [`CA_SECRET`] holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaState {
    /// Issues the workers' certificates.
    pub signing: CaCert,
    /// Made ahead of the signing one's expiry; trusted already, signs from halfway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<CaCert>,
    /// Signed before and still valid: trusted until they expire (no key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<CaCert>,
}

impl CaState {
    /// Read from the Secret's `state.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, CertificateError> {
        let state: Self = serde_json::from_slice(bytes)
            .map_err(|e| CertificateError::Unreadable(format!("{STATE_KEY}: {e}")))?;
        if state.signing.key.is_none() {
            return Err(CertificateError::Unreadable(
                "the signing CA has no key".into(),
            ));
        }
        Ok(state)
    }

    /// The certificates clients trust, newest first, one PEM document.
    pub fn bundle(&self) -> String {
        self.next
            .iter()
            .chain(std::iter::once(&self.signing))
            .chain(&self.retired)
            .map(|ca| ca.cert.trim_end())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    /// The state a moment `now` calls for, or `None` when it is still right. `mint` makes a CA
    /// valid from `now` for the policy's validity.
    pub fn step(
        current: Option<&CaState>,
        now: i64,
        policy: &CertificatePolicy,
        mut mint: impl FnMut(i64) -> Result<CaCert, CertificateError>,
    ) -> Result<Option<CaState>, CertificateError> {
        let renew_before = policy.ca_renew_before.as_secs() as i64;
        let mut state = match current {
            None => {
                return Ok(Some(CaState {
                    signing: mint(now)?,
                    next: None,
                    retired: Vec::new(),
                }));
            }
            Some(state) => state.clone(),
        };
        // 1. Renewal begins: the next CA is trusted from now on.
        if state.next.is_none() && state.signing.not_after - now <= renew_before {
            state.next = Some(mint(now)?);
        }
        // 2. Halfway: the next CA signs; the old one is trusted until it expires.
        if state.signing.not_after - now <= renew_before / 2
            && let Some(next) = state.next.take()
        {
            let mut old = std::mem::replace(&mut state.signing, next);
            old.key = None;
            state.retired.insert(0, old);
        }
        // 3. An expired CA is trusted no more.
        state.retired.retain(|ca| ca.not_after > now);
        Ok((Some(&state) != current).then_some(state))
    }

    /// When [`CaState::step`] next has something to do (unix seconds).
    pub fn next_step_at(&self, policy: &CertificatePolicy) -> i64 {
        let renew_before = policy.ca_renew_before.as_secs() as i64;
        let handover = match &self.next {
            None => self.signing.not_after - renew_before,
            Some(_) => self.signing.not_after - renew_before / 2,
        };
        self.retired
            .iter()
            .map(|ca| ca.not_after)
            .chain([handover])
            .min()
            .unwrap_or(handover)
    }

    /// What issues workers' certificates.
    pub fn issuer(&self) -> Result<SigningCa, CertificateError> {
        let key = self
            .signing
            .key
            .as_deref()
            .ok_or_else(|| CertificateError::Unreadable("the signing CA has no key".into()))?;
        let key = KeyPair::from_pem(key)
            .map_err(|e| CertificateError::Unreadable(format!("the signing CA's key: {e}")))?;
        Ok(SigningCa {
            name: self.signing.name.clone(),
            not_after: self.signing.not_after,
            issuer: Issuer::new(ca_params(&self.signing.name), key),
        })
    }
}

/// A CA's parameters: its name, and that it issues certificates. The same for the one made
/// and for the one rebuilt from the Secret to sign (its subject and key identify it).
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn date(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Clocks differ a little between machines: a certificate is valid from a minute before it
/// was made.
const SKEW: i64 = 60;

/// A new CA, valid from `now` for `validity`.
pub fn mint_ca(now: i64, validity: Duration) -> Result<CaCert, CertificateError> {
    // Unique even for two made within a second: a certificate's issuer is found by this name.
    let name = format!(
        "ferry CA {now} {}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut params = ca_params(&name);
    let not_after = now + validity.as_secs() as i64;
    params.not_before = date(now - SKEW);
    params.not_after = date(not_after);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CaCert {
        name,
        not_before: now - SKEW,
        not_after,
        cert: cert.pem(),
        key: Some(key.serialize_pem()),
    })
}

/// The CA that signs now, ready to issue.
pub struct SigningCa {
    pub name: String,
    pub not_after: i64,
    issuer: Issuer<'static, KeyPair>,
}

/// What the annotation [`CERT_ANNOTATION`] says of a worker's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    pub not_after: i64,
    /// The issuing CA's name.
    pub issuer: String,
    /// A short hash of the names it is for.
    pub names: String,
}

/// A worker's serving certificate and key (PEM) with what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert: String,
    pub key: String,
    pub info: CertInfo,
}

fn names_hash(names: &[String]) -> String {
    crate::stable_hash_hex(&names.join(","), 8)
}

/// The DNS names of a worker reached through the Service `service` of `namespace`: the
/// Service's own names, and every pod's `<pod>.<service>…` name (a pool's workers are reached
/// at theirs; the operator names any worker pod so, `worker_client::tls_name`).
pub fn worker_names(service: &str, namespace: &str) -> Vec<String> {
    let long = [
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}"),
    ];
    let mut names = vec![service.to_owned(), format!("{service}.{namespace}")];
    names.extend(long.iter().cloned());
    names.extend(long.iter().map(|name| format!("*.{name}")));
    names
}

impl SigningCa {
    /// A certificate for `names`, valid from `now` for the policy's validity but never beyond
    /// the CA's own expiry.
    pub fn issue(
        &self,
        names: &[String],
        now: i64,
        policy: &CertificatePolicy,
    ) -> Result<Issued, CertificateError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let not_after = (now + policy.cert_validity.as_secs() as i64).min(self.not_after);
        params.not_before = date(now - SKEW);
        params.not_after = date(not_after);
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            info: CertInfo {
                not_after,
                issuer: self.name.clone(),
                names: names_hash(names),
            },
        })
    }

    /// Whether a certificate described by `info` still serves for `names` at `now`: issued by
    /// this CA, for these names, and not yet due for renewal.
    pub fn still_serves(
        &self,
        info: &CertInfo,
        names: &[String],
        now: i64,
        policy: &CertificatePolicy,
    ) -> bool {
        info.issuer == self.name
            && info.names == names_hash(names)
            && info.not_after - now > policy.cert_renew_before.as_secs() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = DAY as i64;

    fn policy() -> CertificatePolicy {
        CertificatePolicy::default()
    }

    /// A CA without real keys: the state machine's tests need only its dates.
    fn fake(name: &str, now: i64) -> CaCert {
        CaCert {
            name: name.into(),
            not_before: now,
            not_after: now + policy().ca_validity.as_secs() as i64,
            cert: format!("CERT {name}"),
            key: Some(format!("KEY {name}")),
        }
    }

    fn step(state: Option<&CaState>, now: i64) -> Option<CaState> {
        CaState::step(state, now, &policy(), |at| Ok(fake(&format!("ca{at}"), at))).unwrap()
    }

    #[test]
    fn the_renewal_table() {
        let first = step(None, 0).expect("made");
        assert_eq!(first.signing.name, "ca0");
        let expiry = first.signing.not_after;
        let window = policy().ca_renew_before.as_secs() as i64;
        // (day, what the state is after a step then)
        assert_eq!(step(Some(&first), 1), None, "nothing to do");
        assert_eq!(step(Some(&first), expiry - window - 1), None);
        assert_eq!(first.next_step_at(&policy()), expiry - window);

        let renewing = step(Some(&first), expiry - window).expect("renewal begins");
        assert_eq!(renewing.signing.name, "ca0", "the old CA still signs");
        let next = renewing.next.clone().expect("a next CA");
        assert!(renewing.bundle().contains("CERT ca0") && renewing.bundle().contains(&next.cert));
        assert_eq!(step(Some(&renewing), expiry - window / 2 - 1), None);
        assert_eq!(renewing.next_step_at(&policy()), expiry - window / 2);

        let handed = step(Some(&renewing), expiry - window / 2).expect("handover");
        assert_eq!(handed.signing, next, "the next CA signs");
        assert_eq!(handed.retired.len(), 1);
        assert_eq!(handed.retired[0].key, None, "a retired CA keeps no key");
        assert!(handed.bundle().contains("CERT ca0"), "still trusted");
        assert_eq!(handed.next_step_at(&policy()), expiry);

        let pruned = step(Some(&handed), expiry).expect("the old CA expired");
        assert!(pruned.retired.is_empty());
        assert!(!pruned.bundle().contains("CERT ca0"));
        assert_eq!(step(Some(&pruned), expiry + D), None);
    }

    #[test]
    fn an_operator_back_after_the_ca_expired_makes_a_new_one_that_signs_at_once() {
        let first = step(None, 0).unwrap();
        let late = first.signing.not_after + 10 * D;
        let state = step(Some(&first), late).unwrap();
        assert_eq!(state.signing.not_before, late);
        assert!(state.next.is_none());
        assert!(state.retired.is_empty(), "the expired CA is not trusted");
    }

    #[test]
    fn policies_that_would_renew_forever_are_refused() {
        let d = |days: u64| Duration::from_secs(days * DAY);
        assert!(CertificatePolicy::new(d(365), d(90), d(90), d(30)).is_ok());
        let err = CertificatePolicy::new(d(365), d(400), d(90), d(30)).unwrap_err();
        assert!(err.to_string().contains("--ca-renew-before"), "{err}");
        let err = CertificatePolicy::new(d(365), d(90), d(30), d(30)).unwrap_err();
        assert!(err.to_string().contains("--cert-validity"), "{err}");
        let err = CertificatePolicy::new(d(365), d(50), d(90), d(30)).unwrap_err();
        assert!(
            err.to_string().contains("half of --ca-renew-before"),
            "{err}"
        );
    }

    #[test]
    fn a_state_survives_its_secret() {
        let state = CaState::step(None, unix_now(), &policy(), |now| {
            mint_ca(now, policy().ca_validity)
        })
        .unwrap()
        .unwrap();
        let json = serde_json::to_vec(&state).unwrap();
        assert_eq!(CaState::parse(&json).unwrap(), state);
        let err = CaState::parse(b"{}").unwrap_err();
        assert!(err.to_string().contains("delete it"), "{err}");
    }

    #[test]
    fn a_certificate_is_kept_until_its_issuer_names_or_renewal_call_for_a_new_one() {
        let now = unix_now();
        let state = CaState::step(None, now, &policy(), |at| mint_ca(at, policy().ca_validity))
            .unwrap()
            .unwrap();
        let ca = state.issuer().unwrap();
        let names = worker_names("ferry-tp-erp", "plant-a");
        let issued = ca.issue(&names, now, &policy()).unwrap();
        assert!(issued.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.still_serves(&issued.info, &names, now, &policy()));
        let due = issued.info.not_after - policy().cert_renew_before.as_secs() as i64;
        assert!(!ca.still_serves(&issued.info, &names, due, &policy()));
        let other = worker_names("ferry-tp-erp", "plant-b");
        assert!(!ca.still_serves(&issued.info, &other, now, &policy()));
        let other_ca = CaState::step(None, now, &policy(), |at| {
            mint_ca(at + 1, policy().ca_validity)
        })
        .unwrap()
        .unwrap()
        .issuer()
        .unwrap();
        assert!(!other_ca.still_serves(&issued.info, &names, now, &policy()));
    }

    #[test]
    fn a_certificate_names_every_worker_pod() {
        let names = worker_names("ferry-wp-fleet", "plant-a");
        assert!(names.contains(&"*.ferry-wp-fleet.plant-a.svc".to_owned()));
        assert!(names.contains(&"ferry-wp-fleet.plant-a.svc.cluster.local".to_owned()));
    }
}
