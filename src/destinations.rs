//! Forbidden destinations (docs/security.md, "Forbidden destinations"):
//! address ranges a host, source or target URL must never reach — the cloud metadata address
//! (link-local), the node's own loopback — whatever a tenant writes in a spec. The operator
//! refuses a spec whose URL is, or resolves to, such an address; the worker checks the
//! addresses again when it connects (DNS can change after the operator looked).
//!
//! Pure apart from [`Forbidden::check_url`]'s name lookup; shared by the operator and the worker
//! (and so below both in the layers, as `wire` is).

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

/// Link-local, IPv4 and IPv6: the cloud metadata address (169.254.169.254) is in it.
pub const LINK_LOCAL: &str = "169.254.0.0/16,fe80::/10";
/// The node's own loopback.
pub const LOOPBACK: &str = "127.0.0.0/8,::1/128";

/// How long the operator waits for a name to resolve before it leaves the check to the
/// worker's connect.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// `--forbidden-destinations` is not a list of CIDRs.
#[derive(Debug, thiserror::Error)]
#[error("--forbidden-destinations: {given:?} is not a CIDR (e.g. 169.254.0.0/16, ::1/128)")]
pub struct NotACidr {
    given: String,
}

/// A URL that reaches a forbidden address, and why (for a status message or a log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{url} {how} {address}, in {range}, which --forbidden-destinations forbids")]
pub struct Refusal {
    pub url: String,
    /// "is" for a literal address, "resolves to" for a name.
    pub how: &'static str,
    pub address: IpAddr,
    pub range: IpNet,
}

/// The ranges no worker may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forbidden(Vec<IpNet>);

impl Forbidden {
    /// A comma-separated list of CIDRs (a plain address counts as one address); "" is none.
    pub fn parse(list: &str) -> Result<Self, NotACidr> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|given| {
                given
                    .parse::<IpNet>()
                    .or_else(|_| given.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| NotACidr {
                        given: given.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The operator's default: link-local everywhere; loopback too in a cluster (outside one,
    /// the hosts a developer runs are on loopback).
    pub fn operator_default(in_cluster: bool) -> Self {
        let built_in = |list| Self::parse(list).expect("the built-in ranges are CIDRs");
        let mut ranges = built_in(LINK_LOCAL);
        if in_cluster {
            ranges.0.extend(built_in(LOOPBACK).0);
        }
        ranges
    }

    /// As given on a command line (what the operator passes to its workers).
    pub fn to_flag(&self) -> String {
        self.0
            .iter()
            .map(IpNet::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, as given.
    pub fn ranges(&self) -> &[IpNet] {
        &self.0
    }

    /// The range that forbids `address`, if one does. An IPv4 address written as IPv6
    /// (`::ffff:169.254.169.254`) is the IPv4 address.
    pub fn covering(&self, address: IpAddr) -> Option<IpNet> {
        let address = address.to_canonical();
        self.0.iter().copied().find(|net| net.contains(&address))
    }

    /// `url`'s host when it is a literal address in a forbidden range.
    pub fn literal(&self, url: &reqwest::Url) -> Option<Refusal> {
        let address = match url.host()? {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return None,
        };
        self.refusal(url.as_str(), "is", address)
    }

    fn refusal(&self, url: &str, how: &'static str, address: IpAddr) -> Option<Refusal> {
        self.covering(address).map(|range| Refusal {
            url: url.to_owned(),
            how,
            address: address.to_canonical(),
            range,
        })
    }

    /// Whether `url` is, or resolves to, a forbidden address. A name that does not resolve
    /// (yet, or within two seconds) passes here: the worker checks again when it connects. A
    /// URL that does not parse passes too: the schema and the worker refuse it on their own.
    pub async fn check_url(&self, url: &str) -> Result<(), Refusal> {
        if self.is_empty() {
            return Ok(());
        }
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        if let Some(refusal) = self.literal(&parsed) {
            return Err(refusal);
        }
        let (Some(url::Host::Domain(name)), Some(port)) =
            (parsed.host(), parsed.port_or_known_default())
        else {
            return Ok(());
        };
        let lookup = tokio::net::lookup_host((name, port));
        let Ok(Ok(addresses)) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await else {
            return Ok(());
        };
        for address in addresses {
            if let Some(refusal) = self.refusal(url, "resolves to", address.ip()) {
                return Err(refusal);
            }
        }
        Ok(())
    }
}

/// This process's forbidden destinations: set once when a worker starts
/// (`--forbidden-destinations`, which the operator passes on); none until then.
static PROCESS: std::sync::OnceLock<Forbidden> = std::sync::OnceLock::new();

/// Set this process's forbidden destinations, once; a second call changes nothing.
pub fn forbid_for_process(forbidden: Forbidden) {
    let _ = PROCESS.set(forbidden);
}

/// This process's forbidden destinations.
pub fn for_process() -> &'static Forbidden {
    static NONE: Forbidden = Forbidden(Vec::new());
    PROCESS.get().unwrap_or(&NONE)
}

/// The addresses `name` resolves to that this process may reach; an error naming the address
/// and its range when it resolves only to forbidden ones. What a worker's clients connect
/// through, so a name that resolves elsewhere after the operator looked is still refused.
pub async fn resolve_allowed(name: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let forbidden = for_process();
    let resolved: Vec<_> = tokio::net::lookup_host((name, port)).await?.collect();
    let mut refused = None;
    let allowed: Vec<_> = resolved
        .into_iter()
        .filter(|address| match forbidden.covering(address.ip()) {
            Some(range) => {
                refused.get_or_insert((address.ip().to_canonical(), range));
                false
            }
            None => true,
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some((address, range))) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{name} resolves to {address}, in {range}, which --forbidden-destinations forbids"
            ),
        )),
        _ => Ok(allowed),
    }
}

/// The name resolver of a worker's HTTP clients (the host client's hyper connector, the
/// connection drivers' reqwest client): the system's resolver, less forbidden addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuardedResolver;

type Resolved = std::vec::IntoIter<std::net::SocketAddr>;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = Resolved;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Resolved, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        Box::pin(async move { Ok(resolve_allowed(name.as_str(), 0).await?.into_iter()) })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addresses = resolve_allowed(name.as_str(), 0).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(list: &str) -> Forbidden {
        Forbidden::parse(list).unwrap()
    }

    #[test]
    fn ranges_cover_their_addresses_and_nothing_else() {
        let default = forbidden(&format!("{LINK_LOCAL},{LOOPBACK}"));
        for (address, range) in [
            ("169.254.169.254", Some("169.254.0.0/16")),
            ("::ffff:169.254.169.254", Some("169.254.0.0/16")),
            ("fe80::1", Some("fe80::/10")),
            ("127.0.0.1", Some("127.0.0.0/8")),
            ("127.10.20.30", Some("127.0.0.0/8")),
            ("::1", Some("::1/128")),
            ("10.0.0.1", None),
            ("169.255.0.1", None),
            ("8.8.8.8", None),
            ("2001:db8::1", None),
        ] {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(
                default.covering(address).map(|n| n.to_string()).as_deref(),
                range,
                "{address}"
            );
        }
    }

    #[test]
    fn the_operator_forbids_loopback_only_in_a_cluster() {
        assert_eq!(
            Forbidden::operator_default(true).to_flag(),
            "169.254.0.0/16,fe80::/10,127.0.0.0/8,::1/128"
        );
        assert_eq!(
            Forbidden::operator_default(false).to_flag(),
            "169.254.0.0/16,fe80::/10"
        );
    }

    #[test]
    fn the_flag_parses_cidrs_and_plain_addresses_and_names_what_it_cannot() {
        let parsed = forbidden(" 10.0.0.0/8 , 192.168.1.7,fd00::/8,");
        assert_eq!(parsed.to_flag(), "10.0.0.0/8,192.168.1.7/32,fd00::/8");
        assert_eq!(Forbidden::parse(&parsed.to_flag()).unwrap(), parsed);
        // Host bits are dropped: the range is what is meant.
        assert_eq!(forbidden("10.1.2.3/8").to_flag(), "10.0.0.0/8");
        assert!(forbidden("").is_empty());
        for bad in ["10.0.0.0/33", "example.com", "169.254/16", "::1/129"] {
            let error = Forbidden::parse(bad).unwrap_err().to_string();
            assert!(
                error.contains("--forbidden-destinations") && error.contains(bad),
                "{error}"
            );
        }
    }

    proptest::proptest! {
        /// A range covers exactly the addresses that share its first `prefix` bits, written as
        /// IPv4 or as IPv4-mapped IPv6; the flag reads back as the same ranges.
        #[test]
        fn a_range_covers_what_shares_its_prefix(net: u32, prefix in 0u8..=32, address: u32) {
            let range = std::net::Ipv4Addr::from(net);
            let forbidden = forbidden(&format!("{range}/{prefix}"));
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            let expected = (address & mask) == (net & mask);
            let v4 = std::net::Ipv4Addr::from(address);
            proptest::prop_assert_eq!(forbidden.covering(IpAddr::V4(v4)).is_some(), expected);
            proptest::prop_assert_eq!(
                forbidden.covering(IpAddr::V6(v4.to_ipv6_mapped())).is_some(),
                expected
            );
            proptest::prop_assert_eq!(&Forbidden::parse(&forbidden.to_flag()).unwrap(), &forbidden);
        }
    }

    #[tokio::test]
    async fn literal_and_resolved_urls_are_refused_naming_address_and_range() {
        let default = forbidden(&format!("{LINK_LOCAL},{LOOPBACK}"));
        let refusal = default
            .check_url("http://169.254.169.254/latest/meta-data/")
            .await
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "http://169.254.169.254/latest/meta-data/ is 169.254.169.254, in 169.254.0.0/16, \
             which --forbidden-destinations forbids"
        );
        let refusal = default.check_url("http://[::1]:9090/x").await.unwrap_err();
        assert_eq!(refusal.range.to_string(), "::1/128");
        // A name is looked up: localhost is loopback.
        let refusal = default
            .check_url("http://localhost:9090/x")
            .await
            .unwrap_err();
        assert_eq!(refusal.how, "resolves to");
        assert!(refusal.address.is_loopback(), "{refusal}");
        // Allowed: other addresses, names that do not resolve, what is not a URL (the schema
        // refuses that), and everything when nothing is forbidden.
        for url in [
            "http://10.0.0.7:8080/ingest",
            "https://erp.invalid/ingest",
            "not a url",
        ] {
            assert_eq!(default.check_url(url).await, Ok(()), "{url}");
        }
        assert_eq!(
            Forbidden::default()
                .check_url("http://169.254.169.254/")
                .await,
            Ok(())
        );
    }
}
