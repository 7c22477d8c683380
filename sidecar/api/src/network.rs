//! IPv4 networks as the interception rules and the injection webhook both take them: one
//! parser, so that a pod the webhook admits never carries a network `weir-sidecar init` refuses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `10.0.0.0/8` (a bare address means `/32`), without host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Network {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Ipv4Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        if addr.contains(':') {
            return Err(format!(
                "{s:?}: only IPv4 is intercepted, so an IPv6 network needs no exclusion"
            ));
        }
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: expected an IPv4 network such as 10.0.0.0/8"))?;
        let prefix = match prefix {
            None => 32,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?,
        };
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; the network is {network}/{prefix}"
            ));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test of the parser both the interception rules (as `Cidr`) and the webhook use.
    #[test]
    fn parses_networks_and_refuses_host_bits_and_ipv6() {
        for (given, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("169.254.169.254", "169.254.169.254/32"),
            ("10.1.2.3", "10.1.2.3/32"),
        ] {
            let parsed = given.parse::<Ipv4Network>();
            assert_eq!(
                parsed.map(|n| n.to_string()),
                Ok(shown.to_owned()),
                "{given}"
            );
        }
        assert_eq!("0.0.0.0/0".parse::<Ipv4Network>().unwrap().prefix, 0);
        for (given, said) in [
            ("10.0.0.1/8", "has host bits set; the network is 10.0.0.0/8"),
            ("fd00::/8", "IPv6"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.0/x", "prefix"),
            ("ten", "expected an IPv4 network"),
            ("ten/8", "expected an IPv4 network"),
        ] {
            let refused = given.parse::<Ipv4Network>().unwrap_err();
            assert!(refused.contains(said), "{given}: {refused}");
        }
    }
}
