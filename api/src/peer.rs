//! Where a client comes from, as the limits count it: the login limiter,
//! the audit log's summed refusals and the listeners' per-source
//! connection cap all key on the same block.

use std::net::{IpAddr, Ipv6Addr};

/// The block one client is taken to hold: its IPv4 address (also when it
/// arrives IPv4-mapped on a dual-stack listener), or its IPv6 /64, the
/// smallest block one party usually holds.
pub fn source_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_client_its_address() {
        let block = |s: &str| source_block(s.parse().unwrap()).to_string();
        assert_eq!(block("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(block("2001:db8:1:2::1"), block("2001:db8:1:2:ffff::9"));
        assert_ne!(block("2001:db8:1:2::1"), block("2001:db8:1:3::1"));
        assert_eq!(block("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(block("192.0.2.7"), "192.0.2.7");
    }
}
