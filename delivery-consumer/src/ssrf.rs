//! The SSRF guard: outbound webhooks never reach loopback, private, CGNAT, link-local, cloud
//! metadata, multicast, unspecified or otherwise non-public addresses, in any IPv4 or IPv6
//! spelling, unless an operator allow-list (`delivery.ssrf_allow`, CIDRs) permits them.
//!
//! **Where it is enforced.** Hosts given by name are resolved by [`GuardedResolver`], which
//! hands the HTTP client only the addresses that passed: the client connects to exactly the
//! address that was checked, so a DNS answer that changes between a check and a connect (DNS
//! rebinding) cannot slip through. Hosts given as IP literals never reach a resolver, so
//! [`Policy::check_url`] checks them before the request is built. The client does not use
//! proxies and does not follow redirects (a redirect could point anywhere).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A request the guard refused; found again in the client's error chain to classify it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused to connect to {host} ({addr}): {reason} address")]
pub struct Refused {
    pub host: String,
    pub addr: IpAddr,
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct Policy {
    allow: Arc<Vec<IpNet>>,
}

impl Policy {
    /// `allow` was validated with the configuration; an unparsable entry is an error here too.
    pub fn new(allow: &[String]) -> Result<Self, ipnet::AddrParseError> {
        let allow = allow
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<IpNet>, _>>()?;
        Ok(Self {
            allow: Arc::new(allow),
        })
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = |ip: IpAddr| self.allow.iter().any(|net| net.contains(&ip));
        if allowed(ip) || embedded.is_some_and(allowed) {
            return None;
        }
        classify(ip)
    }

    /// Checks a URL whose host is an IP literal (names are checked by the resolver).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        match self.refusal(ip) {
            Some(reason) => Err(Refused {
                host: ip.to_string(),
                addr: ip,
                reason,
            }),
            None => Ok(()),
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u8) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(bits))
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RULES: &[([u8; 4], u8, &str)] = &[
        ([169, 254, 169, 254], 32, "cloud metadata"),
        ([100, 100, 100, 200], 32, "cloud metadata"),
        ([0, 0, 0, 0], 8, "unspecified"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([10, 0, 0, 0], 8, "private"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 168, 0, 0], 16, "private"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([192, 0, 0, 0], 24, "reserved"),
        ([192, 0, 2, 0], 24, "reserved"),
        ([198, 18, 0, 0], 15, "reserved"),
        ([198, 51, 100, 0], 24, "reserved"),
        ([203, 0, 113, 0], 24, "reserved"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    RULES
        .iter()
        .find(|(net, bits, _)| in_v4(ip, *net, *bits))
        .map(|(_, _, reason)| *reason)
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |a: u16, b: u16| {
        let [a1, a2] = a.to_be_bytes();
        let [b1, b2] = b.to_be_bytes();
        Ipv4Addr::new(a1, a2, b1, b2)
    };
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible; not :: and ::1 themselves).
        [0, 0, 0, 0, 0, 0xffff, a, b] => Some(low(a, b)),
        [0, 0, 0, 0, 0, 0, a, b] if (a, b) != (0, 0) && (a, b) != (0, 1) => Some(low(a, b)),
        // 64:ff9b::/96, the well-known NAT64 prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, a, b] => Some(low(a, b)),
        // 2002:AABB:CCDD::/48, 6to4.
        [0x2002, a, b, ..] => Some(low(a, b)),
        _ => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if s[0] & 0xfe00 == 0xfc00 {
        // fc00::/7, including AWS's metadata address fd00:ec2::254.
        Some("unique-local")
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        Some("link-local")
    } else if s[0] & 0xff00 == 0xff00 {
        Some("multicast")
    } else if (s[0], s[1]) == (0x2001, 0x0db8) || (s[0], s[1]) == (0x2001, 0) || s[0] == 0x0100 {
        // Documentation, Teredo (an obfuscated IPv4 inside), discard-only.
        Some("reserved")
    } else {
        None
    }
}

/// Why `ip` is not a public unicast address, or `None` when it is.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Resolves with the system resolver, then keeps only the addresses the policy permits.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Policy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
                    None => true,
                    Some(reason) => {
                        refused.get_or_insert((a.ip(), reason));
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                // One box: the client's error chain must reach `Refused` itself to classify it.
                (true, Some((addr, reason))) => Err(Refused { host, addr, reason }.into()),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn refuses_every_non_public_form() {
        let policy = Policy::new(&[]).expect("policy");
        for (addr, reason) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "unique-local"),
            ("fc00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("2002:7f00:1::", "loopback"),
            ("2001:db8::1", "reserved"),
        ] {
            assert_eq!(policy.refusal(ip(addr)), Some(reason), "{addr}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(policy.refusal(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_permits_exactly_its_ranges() {
        let policy = Policy::new(&["127.0.0.0/8".into(), "fd12::/16".into()]).expect("policy");
        assert_eq!(policy.refusal(ip("127.0.0.1")), None);
        assert_eq!(policy.refusal(ip("::ffff:127.0.0.1")), None);
        assert_eq!(policy.refusal(ip("fd12::5")), None);
        assert_eq!(policy.refusal(ip("fd13::5")), Some("unique-local"));
        assert_eq!(policy.refusal(ip("10.0.0.1")), Some("private"));
        assert_eq!(policy.refusal(ip("::1")), Some("loopback"));
    }

    #[test]
    fn ip_literal_urls_are_checked() {
        let policy = Policy::new(&[]).expect("policy");
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/",
            "https://169.254.169.254/latest/meta-data",
            "http://[::ffff:a9fe:a9fe]/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            let url: reqwest::Url = url.parse().expect("url");
            assert!(policy.check_url(&url).is_err(), "{url}");
        }
        let public: reqwest::Url = "https://93.184.216.34/hook".parse().expect("url");
        assert!(policy.check_url(&public).is_ok());
    }
}
