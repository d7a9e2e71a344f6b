//! Sorted, merged ranges with binary-search lookup: CIDR sets and port sets.
//! Built at configure time, so a request costs O(log n) whatever the list size.

use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A union of closed ranges `[lo, hi]`, kept sorted and disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RangeSet<T> {
    ranges: Vec<(T, T)>,
}

impl<T: Ord + Copy + Successor> RangeSet<T> {
    pub fn from_ranges(ranges: Vec<(T, T)>) -> Self {
        // Heapsort (configure time only): std's sort_unstable compiles to
        // ~8 KB of Wasm per element type at opt-level 3, and this is
        // instantiated for u16, u32 and u128.
        let ranges = BinaryHeap::from(ranges).into_sorted_vec();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                // Overlapping or adjacent: extend the previous range.
                Some(last) if last.1.successor().is_none_or(|next| lo <= next) => {
                    if hi > last.1 {
                        last.1 = hi;
                    }
                }
                _ => merged.push((lo, hi)),
            }
        }
        RangeSet { ranges: merged }
    }

    pub fn contains(&self, value: T) -> bool {
        let idx = self.ranges.partition_point(|&(lo, _)| lo <= value);
        idx > 0 && self.ranges.get(idx - 1).is_some_and(|&(_, hi)| value <= hi)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(T, T)] {
        &self.ranges
    }

    /// This set plus `more` ranges.
    pub fn with(&self, more: impl IntoIterator<Item = (T, T)>) -> Self {
        RangeSet::from_ranges(self.ranges.iter().copied().chain(more).collect())
    }
}

pub trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u16 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}
impl Successor for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}
impl Successor for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Destination or source ports: numbers and `min:max` ranges.
pub type PortSet = RangeSet<u16>;

/// A Kubernetes port name (IANA_SVC_NAME): lower-case letters, digits and
/// `-`, at most 15 characters, at least one letter, no leading/trailing `-`.
pub fn is_port_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 15
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--")
}

/// Parses `"80"` or `"8000:8080"` (ports 1-65535, as Calico). Named ports
/// are resolved by the producer.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
            _ => Err(format!("{s:?} is not a port number (1-65535)")),
        }
    };
    match text.split_once(':') {
        Some((lo, hi)) => {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("port range {text:?} has min > max"));
            }
            Ok((lo, hi))
        }
        None => parse(text).map(|p| (p, p)),
    }
}

/// A set of CIDRs, IPv4 and IPv6 kept apart. IPv4-mapped IPv6 is folded to IPv4
/// on both sides, so `::ffff:10.0.0.1` matches `10.0.0.0/8`.
///
/// Boxed: a rule has ten optional sets, nearly all absent, so an absent one
/// costs a pointer rather than two lists' headers (at Calico's scale
/// ~400 bytes per rule natively, 4.5 MB of a compiled set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NetSet(Box<Nets>);

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Nets {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
}

impl NetSet {
    pub fn parse<'a>(cidrs: impl IntoIterator<Item = &'a str>) -> Result<NetSet, (usize, String)> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, text) in cidrs.into_iter().enumerate() {
            match parse_cidr(text).map_err(|e| (i, e))? {
                Cidr::V4(lo, hi) => v4.push((lo, hi)),
                Cidr::V6(lo, hi) => v6.push((lo, hi)),
            }
        }
        Ok(NetSet(Box::new(Nets { v4: RangeSet::from_ranges(v4), v6: RangeSet::from_ranges(v6) })))
    }

    /// The IPv4 part (IPv4-mapped IPv6 included) as closed ranges.
    pub fn v4(&self) -> &RangeSet<u32> {
        &self.0.v4
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.0.v4.contains(u32::from(v4)),
            IpAddr::V6(v6) => self.0.v6.contains(u128::from(v6)),
        }
    }
}

enum Cidr {
    V4(u32, u32),
    V6(u128, u128),
}

/// `10.0.0.0/8`, `10.1.2.3` (a host), `fd00::/8`. Host bits are ignored, as Calico does.
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
    let bad_len = || format!("{text:?} has an invalid prefix length");
    let len: Option<u32> = match len {
        Some(l) => Some(l.parse().map_err(|_| bad_len())?),
        None => None,
    };
    match ip {
        IpAddr::V4(v4) => v4_range(v4, len.unwrap_or(32)).ok_or_else(bad_len),
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            // An IPv4-mapped range is an IPv4 range (requests are folded the same way).
            if let Some(v4) = v6.to_ipv4_mapped() {
                if len >= 96 {
                    return v4_range(v4, len - 96).ok_or_else(bad_len);
                }
            }
            v6_range(v6, len).ok_or_else(bad_len)
        }
    }
}

fn v4_range(ip: Ipv4Addr, len: u32) -> Option<Cidr> {
    if len > 32 {
        return None;
    }
    let host_bits = 32 - len;
    let mask = if host_bits == 32 { 0 } else { u32::MAX << host_bits };
    let lo = u32::from(ip) & mask;
    Some(Cidr::V4(lo, lo | !mask))
}

fn v6_range(ip: Ipv6Addr, len: u32) -> Option<Cidr> {
    if len > 128 {
        return None;
    }
    let host_bits = 128 - len;
    let mask = if host_bits == 128 { 0 } else { u128::MAX << host_bits };
    let lo = u128::from(ip) & mask;
    Some(Cidr::V6(lo, lo | !mask))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nets_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["10.0.0.0/8"], "10.255.1.2", true),
            (&["10.0.0.0/8"], "11.0.0.1", false),
            (&["10.1.2.3"], "10.1.2.3", true),
            (&["10.1.2.3"], "10.1.2.4", false),
            (&["10.1.2.3/16"], "10.1.9.9", true), // host bits ignored
            (&["0.0.0.0/0"], "192.168.1.1", true),
            (&["0.0.0.0/0"], "::1", false),
            (&["::/0"], "::1", true),
            (&["fd00::/8"], "fd12::1", true),
            (&["fd00::/8"], "fe80::1", false),
            (&["10.0.0.0/8"], "::ffff:10.0.0.1", true), // mapped folds to v4
            (&["::ffff:10.0.0.0/104"], "10.2.3.4", true),
            (&["127.0.0.0/30", "127.0.0.4/30"], "127.0.0.7", true), // adjacent merge
            (&["127.0.0.0/30", "127.0.0.8/30"], "127.0.0.5", false),
            (&["1.2.3.4/32", "1.2.3.0/24"], "1.2.3.200", true), // overlap merge
            (&[], "1.2.3.4", false),
        ];
        for (cidrs, addr, want) in cases {
            let set = NetSet::parse(cidrs.iter().copied()).unwrap();
            assert_eq!(set.contains(ip(addr)), *want, "{cidrs:?} contains {addr}");
        }
    }

    #[test]
    fn bad_cidrs() {
        for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "x", "", "10.0.0.0/-1", "10.0.0.0/"] {
            assert!(NetSet::parse([bad]).is_err(), "{bad:?} should be rejected");
        }
        let err = NetSet::parse(["10.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(err.0, 1);
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port_range("80"), Ok((80, 80)));
        assert_eq!(parse_port_range("8000:8080"), Ok((8000, 8080)));
        assert!(parse_port_range("9:8").is_err());
        assert!(parse_port_range("65536").is_err());
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("0:80").is_err());
        assert!(parse_port_range("+80").is_err());
        assert!(parse_port_range(" 80 : 90 ").is_err());
        assert!(parse_port_range("http").is_err());
        for (name, ok) in [("http", true), ("http-alt", true), ("h2", true), ("8080", false), ("HTTP", false), ("-x", false), ("a--b", false), ("abcdefghijklmnop", false)] {
            assert_eq!(is_port_name(name), ok, "{name}");
        }
        let set = PortSet::from_ranges(vec![(80, 80), (8000, 8080), (65535, 65535)]);
        for (p, want) in [(80, true), (81, false), (8000, true), (8050, true), (8081, false), (65535, true), (0, false)] {
            assert_eq!(set.contains(p), want, "port {p}");
        }
    }
}
