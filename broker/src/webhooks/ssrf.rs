//! Where a webhook may be sent: the server-side request forgery guard (OWASP SSRF Prevention
//! Cheat Sheet; `../shared/research/interop.md` 3.3). A delivery goes only to global unicast
//! addresses, checked for every address a name resolves to, at registration and again at
//! connect time (the connection then uses exactly the addresses checked, so a name that
//! answers differently the second time gains nothing); an operator's allow-list
//! (`webhooks.allow_private`, CIDR blocks) lets chosen private ranges through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is refused: the rule's name and its range, as a 400 or a delivery error
/// names it.
pub(crate) fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RULES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "this network (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (10.0.0.0/8, RFC 1918)"),
        (
            [100, 64, 0, 0],
            10,
            "shared address space (100.64.0.0/10, carrier-grade NAT)",
        ),
        ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
        (
            [169, 254, 0, 0],
            16,
            "link-local (169.254.0.0/16, cloud metadata among them)",
        ),
        ([172, 16, 0, 0], 12, "private (172.16.0.0/12, RFC 1918)"),
        (
            [192, 0, 0, 0],
            24,
            "IETF protocol assignments (192.0.0.0/24)",
        ),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168.0.0/16, RFC 1918)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
        (
            [240, 0, 0, 0],
            4,
            "reserved (240.0.0.0/4, broadcast among them)",
        ),
    ];
    RULES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, name)| *name)
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some("IPv4-mapped IPv6 (::ffff:0:0/96)");
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return Some("IPv4-compatible IPv6 (::/96)");
    }
    let rules: &[(u16, u16, u16, &str)] = &[
        // (first segment, mask of the first segment, second segment or 0 when any, name)
        (
            0x0064,
            0xffff,
            0xff9b,
            "NAT64 (64:ff9b::/96 and 64:ff9b:1::/48)",
        ),
        (0x0100, 0xffff, 0, "discard-only (100::/64)"),
        (0x2001, 0xffff, 0x0db8, "documentation (2001:db8::/32)"),
        (0x2001, 0xffff, 0x0000, "Teredo (2001::/32)"),
        (0x2002, 0xffff, 0, "6to4 (2002::/16)"),
        (
            0xfc00,
            0xfe00,
            0,
            "unique-local (fc00::/7, fd00:ec2::254 among them)",
        ),
        (0xfe80, 0xffc0, 0, "link-local (fe80::/10)"),
        (0xfec0, 0xffc0, 0, "site-local (fec0::/10)"),
        (0xff00, 0xff00, 0, "multicast (ff00::/8)"),
    ];
    for (first, mask, second, name) in rules {
        if s[0] & mask != *first {
            continue;
        }
        let second_matches = match (*first, *second) {
            // Teredo is 2001:0000::/32 exactly; documentation 2001:db8::/32.
            (0x2001, want) => s[1] == want,
            (0x0064, want) => s[1] == want,
            (0x0100, _) => s[1..4] == [0, 0, 0],
            _ => true,
        };
        if second_matches {
            return Some(name);
        }
    }
    // Only 2000::/3 is allocated as global unicast.
    if s[0] & 0xe000 != 0x2000 {
        return Some("not global unicast (outside 2000::/3)");
    }
    None
}

/// The addresses deliveries may go to: every global unicast address, and the operator's
/// `webhooks.allow_private` ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// A policy allowing `allow` besides the global unicast addresses.
    pub(crate) fn new(allow: Vec<IpNet>) -> AddressPolicy {
        AddressPolicy { allow }
    }

    /// `Ok` when `ip` may be connected to; otherwise the sentence a refusal shows, naming
    /// the rule.
    ///
    /// # Errors
    /// The address is not global unicast and not in the allow-list.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match refusal(ip) {
            None => Ok(()),
            Some(rule) => Err(format!(
                "{ip} is refused: {rule} is not a public address (webhooks.allow_private lets chosen ranges through)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> Option<&'static str> {
        refusal(s.parse().expect("an address"))
    }

    #[test]
    fn every_listed_class_is_refused() {
        for a in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(refused(a).is_some(), "{a} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
        ] {
            assert_eq!(refused(a), None, "{a} is public");
        }
    }

    #[test]
    fn refusals_name_their_rule() {
        assert_eq!(refused("10.1.2.3"), Some("private (10.0.0.0/8, RFC 1918)"));
        let p = AddressPolicy::default();
        let e = p.check("169.254.169.254".parse().expect("ip")).unwrap_err();
        assert!(e.contains("link-local (169.254.0.0/16"), "{e}");
    }

    #[test]
    fn the_allow_list_lets_chosen_ranges_through_and_no_more() {
        let p = AddressPolicy::new(vec!["127.0.0.1/32".parse().expect("net")]);
        assert!(p.check("127.0.0.1".parse().expect("ip")).is_ok());
        assert!(p.check("127.0.0.2".parse().expect("ip")).is_err());
        assert!(p.check("::1".parse().expect("ip")).is_err());
        assert!(p.check("8.8.8.8".parse().expect("ip")).is_ok());
    }
}
