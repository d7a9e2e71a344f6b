//! The request-time index of a [`super::WorkloadPolicy`]: sorted lists of rule
//! positions, and a cursor that walks the union of some of them in order.
//!
//! Rules with source identity clauses are listed per *reading* of the source
//! (an endpoint group, an unknown address, a certificate identity) and split by
//! class (Allow, Pass, Deny/Log): when the two factors disagree, which lists
//! hold a rule is all the walk needs to judge its identity clauses, and after a
//! disputed Pass only rules that can still change the outcome are visited
//! (those lists are built in [`super::classes`]).
//! Rules without identity clauses are listed once, narrowed by source address
//! when their positive `nets` allow it.

use std::collections::BinaryHeap;
use std::net::IpAddr;

use crate::ranges::NetSet;

/// Which list a candidate came from (bits of the cursor's `members`).
pub(super) const FREE: u8 = 1;
pub(super) const ADDRESS_ALLOW: u8 = 1 << 1;
pub(super) const ADDRESS_PASS: u8 = 1 << 2;
pub(super) const ADDRESS_RESTRICT: u8 = 1 << 3;
pub(super) const CERTIFICATE_PASS: u8 = 1 << 4;
pub(super) const CERTIFICATE_RESTRICT: u8 = 1 << 5;

/// A free rule whose source nets span more elementary intervals than this is
/// checked for every request instead (keeps the index linear in the rules).
const WIDE_RULE_INTERVALS: usize = 64;

/// Per-id sorted lists in one buffer (compressed sparse rows): id i's list is
/// `values[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Default)]
pub(super) struct Csr<T = u32> {
    offsets: Vec<u32>,
    values: Vec<T>,
}

impl Csr {
    pub(super) fn new(lists: Vec<Vec<u32>>) -> Csr {
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        let mut values = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        offsets.push(0);
        for list in lists {
            values.extend(list);
            offsets.push(position(values.len()));
        }
        Csr { offsets, values }
    }
}

impl<T> Csr<T> {
    /// Rows already laid out: `offsets` ascending from 0, the last `values.len()`.
    pub(super) fn from_parts(offsets: Vec<u32>, values: Vec<T>) -> Csr<T> {
        Csr { offsets, values }
    }

    pub(super) fn get(&self, id: usize) -> &[T] {
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&lo), Some(&hi)) => self.values.get(lo as usize..hi as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// Rules without source identity clauses, narrowed by IPv4 source address:
/// a rule whose positive source `nets` do not hold the address cannot match,
/// so it is listed only under the elementary intervals its nets cover.
#[derive(Debug, Default)]
pub(super) struct FreeIndex {
    /// Every free rule (an unknown or IPv6 source address walks them all).
    all: Vec<u32>,
    /// Free rules the address does not narrow: no positive source nets, or
    /// nets too wide to list per interval.
    unnarrowed: Vec<u32>,
    /// Starts of the elementary IPv4 intervals, ascending.
    bounds: Vec<u32>,
    /// Narrowed free rules whose nets cover each interval.
    by_interval: Csr,
}

impl FreeIndex {
    /// `rules`: (position, positive source nets), positions ascending.
    pub(super) fn new(rules: &[(u32, Option<&NetSet>)]) -> FreeIndex {
        let all = rules.iter().map(|&(pos, _)| pos).collect();
        let mut bounds: Vec<u32> = Vec::new();
        for (_, nets) in rules {
            for &(lo, hi) in nets.map(|n| n.v4().ranges()).unwrap_or(&[]) {
                bounds.push(lo);
                bounds.extend(hi.checked_add(1));
            }
        }
        // Heapsort, as for range sets: configure time only, and less Wasm.
        let mut bounds = BinaryHeap::from(bounds).into_sorted_vec();
        bounds.dedup();
        let mut unnarrowed = Vec::new();
        let mut by_interval = vec![Vec::new(); bounds.len()];
        for &(pos, nets) in rules {
            let Some(nets) = nets else {
                unnarrowed.push(pos);
                continue;
            };
            // Interval i is [bounds[i], bounds[i+1]); a range starts at a bound
            // and ends just before one (or at the top of the address space).
            let spans: Vec<(usize, usize)> = nets
                .v4()
                .ranges()
                .iter()
                .map(|&(lo, hi)| {
                    (bounds.partition_point(|&b| b < lo), hi.checked_add(1).map_or(bounds.len(), |end| bounds.partition_point(|&b| b < end)))
                })
                .collect();
            if spans.iter().map(|(a, b)| b.saturating_sub(*a)).sum::<usize>() > WIDE_RULE_INTERVALS {
                unnarrowed.push(pos);
                continue;
            }
            for (first, end) in spans {
                for list in by_interval.get_mut(first..end).into_iter().flatten() {
                    list.push(pos);
                }
            }
        }
        FreeIndex { all, unnarrowed, bounds, by_interval: Csr::new(by_interval) }
    }

    /// The free rules that can match a request from `ip`, as two sorted lists.
    pub(super) fn candidates(&self, ip: Option<IpAddr>) -> [&[u32]; 2] {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => {
                let at = self.bounds.partition_point(|&b| b <= u32::from(v4));
                let narrowed = at.checked_sub(1).map_or(&[][..], |i| self.by_interval.get(i));
                [&self.unnarrowed, narrowed]
            }
            _ => [&self.all, &[]],
        }
    }
}

/// A sorted list of rule positions, as 16-bit numbers where the workload's
/// rules are few enough (at Calico's scale ~11k): the identity index's rows
/// are most of a compiled workload policy, and every VM holds its own.
#[derive(Debug, Clone, Copy)]
pub(super) enum Positions<'a> {
    Narrow(&'a [u16]),
    Wide(&'a [u32]),
}

impl Default for Positions<'_> {
    fn default() -> Self {
        Positions::Wide(&[])
    }
}

impl<'a> From<&'a [u32]> for Positions<'a> {
    fn from(list: &'a [u32]) -> Self {
        Positions::Wide(list)
    }
}

impl<'a> Positions<'a> {
    pub(super) fn first(self) -> Option<u32> {
        match self {
            Positions::Narrow(l) => l.first().map(|&p| u32::from(p)),
            Positions::Wide(l) => l.first().copied(),
        }
    }

    /// The list without its first position.
    fn rest(self) -> Self {
        match self {
            Positions::Narrow(l) => Positions::Narrow(l.get(1..).unwrap_or(&[])),
            Positions::Wide(l) => Positions::Wide(l.get(1..).unwrap_or(&[])),
        }
    }

    /// The suffix from the first position `>= target` (see [`seek`]).
    fn seek(self, target: u32) -> Self {
        match self {
            Positions::Narrow(l) => Positions::Narrow(seek(l, target)),
            Positions::Wide(l) => Positions::Wide(seek(l, target)),
        }
    }

    #[cfg(test)]
    pub(super) fn len(self) -> usize {
        match self {
            Positions::Narrow(l) => l.len(),
            Positions::Wide(l) => l.len(),
        }
    }

    #[cfg(test)]
    pub(super) fn iter(self) -> impl Iterator<Item = u32> + 'a {
        let (narrow, wide) = match self {
            Positions::Narrow(l) => (l, &[][..]),
            Positions::Wide(l) => (&[][..], l),
        };
        narrow.iter().map(|&p| u32::from(p)).chain(wide.iter().copied())
    }
}

/// Up to this many lists are merged.
const SLOTS: usize = 7;

/// Walks the union of sorted position lists in ascending order, each position
/// once, with the bits of the lists that hold it; optionally also the
/// intersection of two lists (positions both hold).
pub(super) struct Merge<'a> {
    /// Each list after its head, its head (`EXHAUSTED` when none) and bits:
    /// the heads are compared at every step, and kept as numbers they need
    /// no look at the list's width.
    lists: [(Positions<'a>, u32, u8); SLOTS],
    both: Option<(Positions<'a>, Positions<'a>, u8)>,
}

/// The head of an exhausted list: above every position (a position is below
/// the workload's rule count, which is below this).
const EXHAUSTED: u32 = u32::MAX;

impl<'a> Merge<'a> {
    /// The lists from position `start` on; empty lists may be passed freely.
    pub(super) fn new(lists: &[(Positions<'a>, u8)], both: Option<(Positions<'a>, Positions<'a>, u8)>, start: u32) -> Merge<'a> {
        // Galloping: a tier's start is usually near the list's head.
        let mut slots: [(Positions<'a>, u32, u8); SLOTS] = [(Positions::default(), EXHAUSTED, 0); SLOTS];
        for (slot, &(list, bits)) in slots.iter_mut().zip(lists) {
            let list = list.seek(start);
            *slot = (list.rest(), list.first().unwrap_or(EXHAUSTED), bits);
        }
        Merge { lists: slots, both: both.map(|(a, b, bits)| (a.seek(start), b.seek(start), bits)) }
    }

    /// The next position below `end`, with the bits of the lists holding it.
    pub(super) fn next_below(&mut self, end: u32) -> Option<(u32, u8)> {
        let common = self.both.as_mut().and_then(|(a, b, _)| align(a, b));
        let head = self.lists.iter().map(|&(_, head, _)| head).min().unwrap_or(EXHAUSTED);
        let pos = common.map_or(head, |c| c.min(head));
        if pos >= end {
            return None;
        }
        let mut members = 0;
        for (list, head, bits) in &mut self.lists {
            if *head == pos {
                *head = list.first().unwrap_or(EXHAUSTED);
                *list = list.rest();
                members |= *bits;
            }
        }
        if let Some((a, b, bits)) = &mut self.both {
            if common == Some(pos) {
                *a = a.rest();
                *b = b.rest();
                members |= *bits;
            }
        }
        Some((pos, members))
    }
}

/// Advances `a` and `b` to their first common position (by galloping in the
/// other list, so a short list skips through a long one in few steps).
fn align(a: &mut Positions<'_>, b: &mut Positions<'_>) -> Option<u32> {
    use Positions::{Narrow, Wide};
    // Settled once per width: the loop then reads plain slices.
    match (a, b) {
        (Narrow(a), Narrow(b)) => align_lists(a, b),
        (Narrow(a), Wide(b)) => align_lists(a, b),
        (Wide(a), Narrow(b)) => align_lists(a, b),
        (Wide(a), Wide(b)) => align_lists(a, b),
    }
}

fn align_lists<A: Copy + Into<u32>, B: Copy + Into<u32>>(a: &mut &[A], b: &mut &[B]) -> Option<u32> {
    loop {
        let (x, y) = ((*a.first()?).into(), (*b.first()?).into());
        if x == y {
            return Some(x);
        }
        if x < y {
            *a = seek(a, y);
        } else {
            *b = seek(b, x);
        }
    }
}

/// The suffix of sorted `list` from its first position `>= target`, found by
/// exponential then binary search: O(log distance), not O(log length).
fn seek<T: Copy + Into<u32>>(list: &[T], target: u32) -> &[T] {
    let below = |p: &T| (*p).into() < target;
    let mut bound = 1;
    while list.get(bound).is_some_and(below) {
        bound *= 2;
    }
    // Everything up to bound/2 is below target; the answer is at most bound.
    let lo = bound / 2;
    let window = list.get(lo..(bound + 1).min(list.len())).unwrap_or(&[]);
    list.get(lo + window.partition_point(below)..).unwrap_or(&[])
}

/// Counts per slot -> where each slot starts, in place: the step of a
/// counting sort and of laying rows out from their lengths (both shift the
/// counts one slot up first, so slot `i` ends up at the sum before it).
pub(crate) fn running_totals(counts: &mut [u32]) {
    let mut total = 0u32;
    for c in counts {
        total = total.saturating_add(*c);
        *c = total;
    }
}

pub(super) fn position(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut m: Merge<'_>, end: u32) -> Vec<(u32, u8)> {
        std::iter::from_fn(|| m.next_below(end)).collect()
    }

    /// Lists of either width merge alike.
    #[test]
    fn merge_yields_each_position_once_with_its_lists() {
        let (a, b, c) = ([1u32, 4, 7, 9], [2u16, 4, 9], [4u32, 5]);
        let m = Merge::new(&[(a[..].into(), 1), (Positions::Narrow(&b), 2), (c[..].into(), 4)], None, 2);
        assert_eq!(drain(m, 9), vec![(2, 2), (4, 7), (5, 4), (7, 1)]);
    }

    #[test]
    fn seek_finds_the_first_position_not_below() {
        let list: Vec<u32> = (0..100).map(|i| i * 3).collect();
        let narrow: Vec<u16> = (0..100).map(|i| i * 3).collect();
        for target in 0..310 {
            let expected = list.partition_point(|&p| p < target);
            assert_eq!(seek(&list, target).len(), list.len() - expected, "target {target}");
            assert_eq!(Positions::Narrow(&narrow).seek(target).len(), list.len() - expected, "target {target}");
        }
        assert!(seek::<u32>(&[], 5).is_empty());
        // Past every 16-bit position.
        assert_eq!(Positions::Narrow(&[7, u16::MAX]).seek(70_000).len(), 0);
        assert_eq!(Positions::Narrow(&[7, u16::MAX]).seek(8).iter().collect::<Vec<_>>(), [65_535]);
    }

    #[test]
    fn merge_intersects_the_pair() {
        let (free, p, q) = ([3u32, 8], [1u16, 2, 5, 6, 8, 10, 12], [0u32, 5, 9, 10, 11]);
        let m = Merge::new(&[(free[..].into(), 1)], Some((Positions::Narrow(&p), q[..].into(), 6)), 0);
        assert_eq!(drain(m, 100), vec![(3, 1), (5, 6), (8, 1), (10, 6)]);
    }

    #[test]
    fn free_rules_are_narrowed_by_source_address() {
        let nets = |cidrs: &[&str]| NetSet::parse(cidrs.iter().copied()).unwrap_or_default();
        let (a, b, c, wide) = (nets(&["10.0.0.0/24"]), nets(&["10.0.0.128/25", "192.168.1.1"]), nets(&["fd00::/8"]), nets(&["0.0.0.0/0"]));
        let index = FreeIndex::new(&[(0, Some(&a)), (1, None), (2, Some(&b)), (3, Some(&c)), (4, Some(&wide))]);
        let at = |ip: &str| {
            let [x, y] = index.candidates(ip.parse().ok());
            let mut v: Vec<u32> = x.iter().chain(y).copied().collect();
            v.sort_unstable();
            v
        };
        // The /0 alone spans a handful of intervals, so it stays narrowed.
        assert_eq!(at("10.0.0.1"), vec![0, 1, 4]);
        assert_eq!(at("10.0.0.200"), vec![0, 1, 2, 4]);
        assert_eq!(at("::ffff:10.0.0.200"), vec![0, 1, 2, 4]);
        assert_eq!(at("192.168.1.1"), vec![1, 2, 4]);
        assert_eq!(at("192.168.1.2"), vec![1, 4]);
        assert_eq!(at("255.255.255.255"), vec![1, 4]);
        assert_eq!(at("0.0.0.0"), vec![1, 4]);
        assert_eq!(at("fd00::1"), vec![0, 1, 2, 3, 4]);
        assert_eq!(index.candidates(None)[0], &[0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_rule_spanning_many_intervals_is_not_narrowed() {
        let hosts: Vec<String> = (0..100).map(|i| format!("10.1.{}.0/24", 2 * i)).collect();
        let many = NetSet::parse(hosts.iter().map(String::as_str)).unwrap_or_default();
        let wide = NetSet::parse(["10.0.0.0/8"]).unwrap_or_default();
        let index = FreeIndex::new(&[(0, Some(&many)), (1, Some(&wide))]);
        // 100 disjoint /24s: 200 intervals, so 0 is checked everywhere (and the /8 covers 201).
        assert_eq!(index.candidates("172.16.0.1".parse().ok()), [&[0, 1][..], &[][..]]);
    }
}
