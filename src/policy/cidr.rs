//! CIDR parsing as the API server accepts it for `ipBlock` (a "legacy" CIDR field): host bits
//! may be set (`10.0.0.1/8` means `10.0.0.0/8`), but IPv4 with leading zeros and IPv4-mapped
//! IPv6 are rejected, as with StrictIPCIDRValidation (on by default since Kubernetes 1.33).

use crate::model::Problem;
use std::net::IpAddr;

use ipnet::IpNet;

/// Parses and masks a CIDR.
pub fn parse(text: &str) -> Result<IpNet, Problem> {
    let invalid =
        || Problem::from("must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)");
    let net: IpNet = text.parse().map_err(|_| invalid())?;
    // ipnet tolerates `010.0.0.0/8`; std's address parser, like the API server, does not
    // (leading zeros are ambiguous: octal or decimal?).
    let address = text.split_once('/').map_or(text, |(a, _)| a);
    if address.parse::<IpAddr>().is_err() {
        return Err(invalid());
    }
    if let IpAddr::V6(v6) = net.addr()
        && v6.to_ipv4_mapped().is_some()
    {
        return Err("must not be an IPv4-mapped IPv6 address".into());
    }
    Ok(net.trunc())
}

/// `inner` lies within `outer` and is strictly smaller, as `except` must be.
pub fn strict_subset(inner: &IpNet, outer: &IpNet) -> bool {
    outer.contains(&inner.network()) && inner.prefix_len() > outer.prefix_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_are_masked() {
        assert_eq!(parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse("2001:db8::1/64").unwrap().to_string(),
            "2001:db8::/64"
        );
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "010.0.0.0/8",
            "::ffff:10.0.0.0/104",
            "x/8",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strict_subsets() {
        let outer = parse("10.0.0.0/8").unwrap();
        assert!(strict_subset(&parse("10.1.0.0/16").unwrap(), &outer));
        assert!(!strict_subset(&parse("10.0.0.0/8").unwrap(), &outer));
        assert!(!strict_subset(&parse("11.0.0.0/16").unwrap(), &outer));
        assert!(!strict_subset(&parse("fd00::/64").unwrap(), &outer));
    }
}
