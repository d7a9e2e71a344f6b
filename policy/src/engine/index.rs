//! The request-time index of a [`super::WorkloadPolicy`]: sorted lists of rule
//! positions, and a cursor that walks the union of some of them in order.
//!
//! Rules with source identity clauses are listed per *reading* of the source
//! (an endpoint group, an unknown address, a certificate identity) and split by
//! class (Allow, Pass, Deny/Log): when the two factors disagree, which lists
//! hold a rule is all the walk needs to judge its identity clauses, and after a
//! disputed Pass only rules that can still change the outcome are visited.
//! Rules without identity clauses are listed once, narrowed by source address
//! when their positive `nets` allow it.

use std::collections::BinaryHeap;
use std::net::IpAddr;

use crate::config::Action;
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
pub(super) struct Csr {
    offsets: Vec<u32>,
    values: Vec<u32>,
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

    pub(super) fn get(&self, id: usize) -> &[u32] {
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&lo), Some(&hi)) => self.values.get(lo as usize..hi as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// How the two-factor check sees a rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Allow,
    Pass,
    /// Deny and Log: matched when either factor satisfies the rule.
    Restrict,
}

impl Class {
    pub(super) fn of(action: Action) -> Class {
        match action {
            Action::Allow => Class::Allow,
            Action::Pass => Class::Pass,
            Action::Deny | Action::Log => Class::Restrict,
        }
    }
}

/// The identity rules one reading of the source satisfies, by class.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Reading<'a> {
    pub allow: &'a [u32],
    pub pass: &'a [u32],
    pub restrict: &'a [u32],
}

/// Identity rules per reading id, by class. Readings that no identity rule
/// tells apart share one set of lists: at Calico's scale 32k endpoint groups
/// fall into far fewer classes, and per-group lists of the broad security-tier
/// rules were most of a compiled workload policy.
#[derive(Debug, Default)]
pub(super) struct ClassLists {
    /// Reading id -> its class of equivalent readings.
    class_of: Vec<u32>,
    /// Lists per class.
    allow: Csr,
    pass: Csr,
    restrict: Csr,
}

impl ClassLists {
    pub(super) fn reading(&self, id: usize) -> Reading<'_> {
        match self.class_of.get(id) {
            Some(&c) => {
                let c = c as usize;
                Reading { allow: self.allow.get(c), pass: self.pass.get(c), restrict: self.restrict.get(c) }
            }
            None => Reading::default(),
        }
    }

    /// How many classes of readings the rules make.
    #[cfg(test)]
    fn classes(&self) -> usize {
        self.class_of.iter().map(|&c| c as usize + 1).max().unwrap_or(0)
    }
}

/// One class of readings while [`ClassListsBuilder`] refines them.
#[derive(Debug, Clone, Default)]
struct Equivalent {
    allow: Vec<u32>,
    pass: Vec<u32>,
    restrict: Vec<u32>,
    /// Readings in the class.
    size: u32,
}

const NO_CLASS: u32 = u32::MAX;

/// Collects [`ClassLists`] rule by rule, in ascending position, refining a
/// partition of the readings: a rule splits each class it holds only part
/// of, so readings stay together exactly while every rule so far treats them
/// alike. Work and memory go with the rules' memberships and the distinct
/// lists, not with readings times rules.
pub(super) struct ClassListsBuilder {
    class_of: Vec<u32>,
    classes: Vec<Equivalent>,
    /// Per class, scratch for the current rule: readings it holds, and the
    /// class they split off into.
    held: Vec<u32>,
    split_into: Vec<u32>,
    touched: Vec<u32>,
}

impl ClassListsBuilder {
    pub(super) fn new(ids: usize) -> Self {
        let all = Equivalent { size: position(ids), ..Equivalent::default() };
        ClassListsBuilder {
            class_of: vec![0; ids],
            classes: vec![all],
            held: vec![0],
            split_into: vec![NO_CLASS],
            touched: Vec::new(),
        }
    }

    /// Adds the rule at `pos` (ascending across calls), satisfied by the
    /// readings `ids` (ascending, each once).
    pub(super) fn add(&mut self, ids: &[u32], class: Class, pos: u32) {
        // A reading given twice would be counted twice and split a class wrongly.
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "reading ids must be ascending and unique");
        self.touched.clear();
        for &id in ids {
            let Some(&c) = self.class_of.get(id as usize) else { continue };
            let Some(held) = self.held.get_mut(c as usize) else { continue };
            if *held == 0 {
                self.touched.push(c);
            }
            *held += 1;
        }
        // Classes the rule holds only part of split; the part it holds takes a copy of the lists.
        for &c in &self.touched {
            let c = c as usize;
            let (Some(&held), Some(whole)) = (self.held.get(c), self.classes.get_mut(c)) else { continue };
            if held < whole.size {
                whole.size -= held;
                let part = Equivalent { size: held, ..whole.clone() };
                if let Some(into) = self.split_into.get_mut(c) {
                    *into = position(self.classes.len());
                }
                self.classes.push(part);
                self.held.push(0);
                self.split_into.push(NO_CLASS);
            }
        }
        for &id in ids {
            let Some(c) = self.class_of.get_mut(id as usize) else { continue };
            match self.split_into.get(*c as usize) {
                Some(&into) if into != NO_CLASS => *c = into,
                _ => {}
            }
        }
        for &c in &self.touched {
            let c = c as usize;
            let target = match self.split_into.get(c) {
                Some(&into) if into != NO_CLASS => into as usize,
                _ => c,
            };
            if let Some(lists) = self.classes.get_mut(target) {
                match class {
                    Class::Allow => lists.allow.push(pos),
                    Class::Pass => lists.pass.push(pos),
                    Class::Restrict => lists.restrict.push(pos),
                }
            }
            if let (Some(held), Some(into)) = (self.held.get_mut(c), self.split_into.get_mut(c)) {
                *held = 0;
                *into = NO_CLASS;
            }
        }
    }

    pub(super) fn build(self) -> ClassLists {
        let (mut allow, mut pass, mut restrict) = (Vec::new(), Vec::new(), Vec::new());
        for class in self.classes {
            allow.push(class.allow);
            pass.push(class.pass);
            restrict.push(class.restrict);
        }
        ClassLists { class_of: self.class_of, allow: Csr::new(allow), pass: Csr::new(pass), restrict: Csr::new(restrict) }
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

/// Up to this many lists are merged.
const SLOTS: usize = 7;

/// Walks the union of sorted position lists in ascending order, each position
/// once, with the bits of the lists that hold it; optionally also the
/// intersection of two lists (positions both hold).
pub(super) struct Merge<'a> {
    lists: [(&'a [u32], u8); SLOTS],
    both: Option<(&'a [u32], &'a [u32], u8)>,
}

impl<'a> Merge<'a> {
    /// The lists from position `start` on; empty lists may be passed freely.
    pub(super) fn new(lists: &[(&'a [u32], u8)], both: Option<(&'a [u32], &'a [u32], u8)>, start: u32) -> Merge<'a> {
        // Galloping: a tier's start is usually near the list's head.
        let from = |l: &'a [u32]| seek(l, start);
        let mut slots: [(&'a [u32], u8); SLOTS] = [(&[], 0); SLOTS];
        for (slot, &(list, bits)) in slots.iter_mut().zip(lists) {
            *slot = (from(list), bits);
        }
        Merge { lists: slots, both: both.map(|(a, b, bits)| (from(a), from(b), bits)) }
    }

    /// The next position below `end`, with the bits of the lists holding it.
    pub(super) fn next_below(&mut self, end: u32) -> Option<(u32, u8)> {
        let common = self.both.as_mut().and_then(|(a, b, _)| align(a, b));
        let pos = self.lists.iter().filter_map(|(l, _)| l.first().copied()).chain(common).min()?;
        if pos >= end {
            return None;
        }
        let mut members = 0;
        for (list, bits) in &mut self.lists {
            if let Some((&head, rest)) = list.split_first() {
                if head == pos {
                    *list = rest;
                    members |= *bits;
                }
            }
        }
        if let Some((a, b, bits)) = &mut self.both {
            if common == Some(pos) {
                *a = a.get(1..).unwrap_or(&[]);
                *b = b.get(1..).unwrap_or(&[]);
                members |= *bits;
            }
        }
        Some((pos, members))
    }
}

/// Advances `a` and `b` to their first common position (by galloping in the
/// other list, so a short list skips through a long one in few steps).
fn align(a: &mut &[u32], b: &mut &[u32]) -> Option<u32> {
    loop {
        let (&x, &y) = (a.first()?, b.first()?);
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
fn seek(list: &[u32], target: u32) -> &[u32] {
    let mut bound = 1;
    while list.get(bound).is_some_and(|&p| p < target) {
        bound *= 2;
    }
    // Everything up to bound/2 is below target; the answer is at most bound.
    let lo = bound / 2;
    let window = list.get(lo..(bound + 1).min(list.len())).unwrap_or(&[]);
    list.get(lo + window.partition_point(|&p| p < target)..).unwrap_or(&[])
}

pub(super) fn position(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings the same rules hold share lists; every reading still gets
    /// exactly the rules that hold it, in order, by class.
    #[test]
    fn class_lists_share_what_readings_share() {
        // (rule position, class, readings holding it) over readings 0..6.
        let rules: &[(u32, Class, &[u32])] = &[
            (0, Class::Pass, &[0, 1, 2, 3, 4]),
            (1, Class::Allow, &[0, 1]),
            (2, Class::Restrict, &[2]),
            (3, Class::Pass, &[0, 1, 2, 3, 4]),
            (4, Class::Allow, &[1, 3]),
            (5, Class::Allow, &[]),
            (6, Class::Restrict, &[3, 9]), // 9 is out of range: ignored
        ];
        let mut b = ClassListsBuilder::new(6);
        for &(pos, class, ids) in rules {
            b.add(ids, class, pos);
        }
        let lists = b.build();
        for id in 0..7u32 {
            let held = |want: Class| -> Vec<u32> {
                rules.iter().filter(|(_, c, ids)| *c == want && ids.contains(&id) && id < 6).map(|r| r.0).collect()
            };
            let r = lists.reading(id as usize);
            assert_eq!(r.allow, held(Class::Allow), "allow of {id}");
            assert_eq!(r.pass, held(Class::Pass), "pass of {id}");
            assert_eq!(r.restrict, held(Class::Restrict), "restrict of {id}");
        }
        // {0}, {1}, {2}, {3}, {4}, {5}: 0 and 1 part at rule 4, 3 and 4 at rule 4 and 6.
        assert_eq!(lists.classes(), 6);

        // Readings no rule tells apart stay one class.
        let mut b = ClassListsBuilder::new(1000);
        let evens: Vec<u32> = (0..1000).step_by(2).collect();
        for pos in 0..50 {
            b.add(&evens, Class::Pass, pos);
        }
        let lists = b.build();
        assert_eq!(lists.classes(), 2);
        assert_eq!(lists.reading(998).pass.len(), 50);
        assert!(lists.reading(999).pass.is_empty());
    }

    fn drain(mut m: Merge<'_>, end: u32) -> Vec<(u32, u8)> {
        std::iter::from_fn(|| m.next_below(end)).collect()
    }

    #[test]
    fn merge_yields_each_position_once_with_its_lists() {
        let (a, b, c) = ([1, 4, 7, 9], [2, 4, 9], [4, 5]);
        let m = Merge::new(&[(&a, 1), (&b, 2), (&c, 4)], None, 2);
        assert_eq!(drain(m, 9), vec![(2, 2), (4, 7), (5, 4), (7, 1)]);
    }

    #[test]
    fn seek_finds_the_first_position_not_below() {
        let list: Vec<u32> = (0..100).map(|i| i * 3).collect();
        for target in 0..310 {
            let expected = list.partition_point(|&p| p < target);
            assert_eq!(seek(&list, target).len(), list.len() - expected, "target {target}");
        }
        assert!(seek(&[], 5).is_empty());
    }

    #[test]
    fn merge_intersects_the_pair() {
        let (free, p, q) = ([3, 8], [1, 2, 5, 6, 8, 10, 12], [0, 5, 9, 10, 11]);
        let m = Merge::new(&[(&free, 1)], Some((&p, &q, 6)), 0);
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
