//! Which endpoint group owns an address: sorted runs of consecutive IPv4
//! addresses and a sorted list of IPv6 addresses, searched by bisection.
//! Pods of one deployment often hold neighbouring addresses (Calico's IPAM
//! hands out a node's /26 block in order), so a cluster's table is far
//! smaller as runs than as a hash map of addresses: ~12 bytes per run
//! against ~50 per address at 256k pods.

use std::net::{IpAddr, Ipv6Addr};

/// Where an address was listed: `entry` indexes the config's endpoint
/// groups (JSON `endpoints` first, then the table's), `item` the address
/// or run within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Origin {
    pub entry: u32,
    pub item: u32,
}

/// An address listed by two groups: the `later` listing is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clash {
    pub address: IpAddr,
    pub later: Origin,
    pub first: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V4Run {
    first: u32,
    last: u32,
    group: u32,
}

#[derive(Debug, Default)]
pub(crate) struct AddressIndex {
    v4: Vec<V4Run>,
    v6: Vec<(Ipv6Addr, u32)>,
    addresses: usize,
}

impl AddressIndex {
    pub fn owner_of(&self, ip: IpAddr) -> Option<u32> {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let after = self.v4.partition_point(|r| r.first <= a);
                let run = self.v4.get(after.checked_sub(1)?)?;
                (a <= run.last).then_some(run.group)
            }
            IpAddr::V6(a) => {
                let i = self.v6.binary_search_by(|(b, _)| b.cmp(&a)).ok()?;
                self.v6.get(i).map(|&(_, g)| g)
            }
        }
    }

    /// Distinct addresses owned.
    pub fn len(&self) -> usize {
        self.addresses
    }
}

/// Listings in any order; [`Self::finish`] sorts them and finds clashes.
/// Listings are kept as tuples that order by address, then config order.
#[derive(Debug, Default)]
pub(crate) struct AddressIndexBuilder {
    /// (first, origin, last, group)
    v4: Vec<(u32, Origin, u32, u32)>,
    /// (address, origin, group)
    v6: Vec<(Ipv6Addr, Origin, u32)>,
}

/// Heapsort: configure time only, and far less Wasm than `sort_unstable`'s
/// instantiations (each adds kilobytes to the module).
fn sorted<T: Ord>(items: Vec<T>) -> Vec<T> {
    std::collections::BinaryHeap::from(items).into_sorted_vec()
}

impl AddressIndexBuilder {
    pub fn add(&mut self, ip: IpAddr, group: u32, origin: Origin) {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.add_v4_run(u32::from(a), u32::from(a), group, origin),
            IpAddr::V6(a) => self.v6.push((a, origin, group)),
        }
    }

    /// `first..=last`.
    pub fn add_v4_run(&mut self, first: u32, last: u32, group: u32, origin: Origin) {
        self.v4.push((first, origin, last, group));
    }

    /// The index, and every listing of an address some other group listed
    /// first (in config order). A group listing an address twice is no clash.
    pub fn finish(self) -> (AddressIndex, Vec<Clash>) {
        let mut clashes = Vec::new();
        // By address, then config order: the first listing of an address owns it.
        let mut v4: Vec<(V4Run, Origin)> = Vec::with_capacity(self.v4.len());
        let mut addresses = 0usize;
        for (first, origin, last, group) in sorted(self.v4) {
            let mut run = V4Run { first, last, group };
            // Runs sorted by start: only the latest kept run can overlap this one.
            if let Some((prev, prev_origin)) = v4.last_mut() {
                if run.first <= prev.last {
                    if run.group != prev.group {
                        let first = if *prev_origin < origin { *prev_origin } else { origin };
                        let later = if *prev_origin < origin { origin } else { *prev_origin };
                        clashes.push(Clash { address: IpAddr::from(std::net::Ipv4Addr::from(run.first)), later, first });
                    }
                    if run.last <= prev.last {
                        continue;
                    }
                    // The part past the kept run is this listing's.
                    run.first = prev.last + 1;
                }
            }
            match v4.last_mut() {
                Some((prev, _)) if prev.group == run.group && prev.last.checked_add(1) == Some(run.first) => {
                    addresses = addresses.saturating_add((run.last - run.first) as usize).saturating_add(1);
                    prev.last = run.last;
                }
                _ => {
                    addresses = addresses.saturating_add((run.last - run.first) as usize).saturating_add(1);
                    v4.push((run, origin));
                }
            }
        }
        let mut v6: Vec<(Ipv6Addr, u32)> = Vec::with_capacity(self.v6.len());
        let mut v6_origin: Option<Origin> = None;
        for (a, origin, group) in sorted(self.v6) {
            match (v6.last(), v6_origin) {
                (Some(&(prev, owner)), Some(first)) if prev == a => {
                    if owner != group {
                        clashes.push(Clash { address: IpAddr::V6(a), later: origin, first });
                    }
                }
                _ => {
                    v6.push((a, group));
                    v6_origin = Some(origin);
                }
            }
        }
        addresses += v6.len();
        // In config order of the refused listing.
        let clashes = sorted(clashes.into_iter().map(|c| (c.later, c.first, c.address)).collect())
            .into_iter()
            .map(|(later, first, address)| Clash { address, later, first })
            .collect();
        let v4 = v4.into_iter().map(|(r, _)| r).collect();
        (AddressIndex { v4, v6, addresses }, clashes)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn at(entry: u32, item: u32) -> Origin {
        Origin { entry, item }
    }

    fn v4(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    #[test]
    fn owners_by_run_and_by_address() {
        let mut b = AddressIndexBuilder::default();
        b.add_v4_run(v4("10.0.0.10"), v4("10.0.0.19"), 0, at(0, 0));
        b.add("10.0.0.20".parse().unwrap(), 0, at(0, 1));
        b.add("10.0.0.21".parse().unwrap(), 1, at(1, 0));
        b.add("::ffff:10.0.0.5".parse().unwrap(), 2, at(2, 0));
        b.add("fd00::1".parse().unwrap(), 2, at(2, 1));
        b.add_v4_run(v4("255.255.255.250"), v4("255.255.255.255"), 3, at(3, 0));
        let (index, clashes) = b.finish();
        assert_eq!(clashes, []);
        let table = [
            ("10.0.0.9", None),
            ("10.0.0.10", Some(0)),
            ("10.0.0.19", Some(0)),
            ("10.0.0.20", Some(0)),
            ("::ffff:10.0.0.20", Some(0)),
            ("10.0.0.21", Some(1)),
            ("10.0.0.22", None),
            ("10.0.0.5", Some(2)),
            ("fd00::1", Some(2)),
            ("fd00::2", None),
            ("255.255.255.255", Some(3)),
            ("0.0.0.0", None),
        ];
        for (ip, want) in table {
            assert_eq!(index.owner_of(ip.parse().unwrap()), want, "{ip}");
        }
        assert_eq!(index.len(), 10 + 1 + 1 + 1 + 1 + 6);
        // 10.0.0.10-20 merged into one run.
        assert_eq!(index.v4.len(), 4);
    }

    #[test]
    fn the_first_listing_owns_an_address_and_later_ones_clash() {
        let mut b = AddressIndexBuilder::default();
        b.add_v4_run(v4("10.0.0.1"), v4("10.0.0.5"), 0, at(0, 0));
        b.add_v4_run(v4("10.0.0.3"), v4("10.0.0.8"), 1, at(1, 0));
        b.add("10.0.0.2".parse().unwrap(), 0, at(2, 0)); // same group: no clash
        b.add("fd00::1".parse().unwrap(), 0, at(0, 1));
        b.add("fd00::1".parse().unwrap(), 1, at(1, 1));
        b.add("fd00::1".parse().unwrap(), 0, at(2, 1));
        let (index, clashes) = b.finish();
        assert_eq!(
            clashes,
            [
                Clash { address: "10.0.0.3".parse().unwrap(), later: at(1, 0), first: at(0, 0) },
                Clash { address: "fd00::1".parse().unwrap(), later: at(1, 1), first: at(0, 1) },
            ]
        );
        assert_eq!(index.owner_of("10.0.0.4".parse().unwrap()), Some(0));
        assert_eq!(index.owner_of("10.0.0.6".parse().unwrap()), Some(1));
        assert_eq!(index.owner_of("fd00::1".parse().unwrap()), Some(0));
    }

    #[test]
    fn a_later_listing_sorted_first_still_clashes_as_the_later() {
        let mut b = AddressIndexBuilder::default();
        // Entry 1 lists 10.0.0.1-9 (starting lower), entry 0 lists 10.0.0.5.
        b.add("10.0.0.5".parse().unwrap(), 0, at(0, 0));
        b.add_v4_run(v4("10.0.0.1"), v4("10.0.0.9"), 1, at(1, 0));
        let (_, clashes) = b.finish();
        assert_eq!(clashes, [Clash { address: "10.0.0.5".parse().unwrap(), later: at(1, 0), first: at(0, 0) }]);
    }
}
