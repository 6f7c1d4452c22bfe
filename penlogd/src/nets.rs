//! Source filters: `ADDR` or `ADDR/PREFIX`, for `--pen-from` and `--web-from`. The
//! original accepted records and lines from anyone (spec §6), so a single spoofed `+`
//! datagram could misattribute clients.

use std::net::IpAddr;

/// An address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parses `ADDR` (a host) or `ADDR/PREFIX`. IPv4-mapped IPv6 is read as IPv4.
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = a
            .parse::<IpAddr>()
            .map_err(|_| format!("bad address '{a}'"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("bad prefix '/{p}' for {addr}")),
            },
        };
        Ok(Net { addr, prefix })
    }

    /// True when `ip` (canonical) lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0
}

/// True when `ip` is allowed by `nets` (an empty list allows everyone).
pub fn allowed(nets: &[Net], ip: IpAddr) -> bool {
    nets.is_empty() || nets.iter().any(|n| n.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse::<IpAddr>().unwrap().to_canonical()
    }

    #[test]
    fn blocks() {
        let n = Net::parse("10.1.0.0/15").unwrap();
        assert!(n.contains(ip("10.1.255.1")) && n.contains(ip("10.0.0.1")));
        assert!(!n.contains(ip("10.2.0.0")) && !n.contains(ip("::1")));
        assert!(Net::parse("127.0.0.2")
            .unwrap()
            .contains(ip("::ffff:127.0.0.2")));
        assert!(!Net::parse("127.0.0.2").unwrap().contains(ip("127.0.0.3")));
        assert!(Net::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Net::parse("fe80::/10").unwrap().contains(ip("febf::1")));
        assert!(!Net::parse("fe80::/10").unwrap().contains(ip("fec0::1")));
        assert!(allowed(&[], ip("1.2.3.4")));
    }

    #[test]
    fn errors() {
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("::/129").is_err());
        assert!(Net::parse("host").is_err());
        assert!(Net::parse("10.0.0.0/x").is_err());
    }
}
