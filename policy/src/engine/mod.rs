//! Specialise a [`PolicySet`] for one workload, then decide requests.
//!
//! At build time: keep only the policies that select the workload and the rules
//! that could match a TCP request to it (destination clauses are about this
//! workload, so they are settled now), and index the rules by the endpoint
//! group that satisfies their source identity clauses. At request time: one
//! hash lookup finds the source's group, then only the rules that group (or no
//! identity clause) admits are walked, in order.

mod decision;
mod facts;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use decision::{Decision, IdentityCheck, Reason, Verdict};
pub use facts::{Peer, RequestFacts};

use crate::config::{Action, TierDefaultAction};
use crate::model::{Group, PolicySet, Rule, SourceView, Universe};
use fixedbitset::FixedBitSet;
use crate::path::{normalize, PathError};
use crate::ranges::PortSet;
use crate::spiffe::SpiffeId;

/// The workload a filter instance protects, as Istio's node metadata describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Named TCP container ports (Istio's `POD_PORTS` node metadata), for
    /// rules that name destination ports.
    pub ports: BTreeMap<String, u16>,
}

/// A tier that selects the workload: its rules are `rules[start..end]`.
#[derive(Debug, Clone)]
struct TierSlice {
    name: String,
    default_action: TierDefaultAction,
    start: u32,
    end: u32,
}

/// The compiled, indexed policy of one workload.
#[derive(Debug)]
pub struct WorkloadPolicy {
    set: Arc<PolicySet>,
    tiers: Vec<TierSlice>,
    /// Applicable rules in evaluation order (indexes into `set.rules`).
    rules: Vec<u32>,
    /// Destination port sets of rules that name ports, resolved against this
    /// workload's container ports: (position, ports, notPorts), by position.
    resolved_ports: Vec<(u32, Option<PortSet>, Option<PortSet>)>,
    /// Positions (into `rules`) of rules without source identity clauses.
    free: Vec<u32>,
    /// Positions of identity rules each endpoint group satisfies, CSR layout:
    /// group g's are `group_rules[group_offsets[g]..group_offsets[g+1]]`.
    group_offsets: Vec<u32>,
    group_rules: Vec<u32>,
    /// Positions of identity rules an unknown address satisfies.
    unknown: Vec<u32>,
    /// Positions of identity rules that restrict (Deny/Log) or pass (Pass):
    /// the only identity rules that can have an effect when the two factors
    /// disagree.
    restricting: Vec<u32>,
    /// Some Deny/Log/Pass rule has source identity clauses: a certificate from
    /// an unknown address then needs the slow path (such rules take either factor).
    deny_by_identity: bool,
    /// Positions of restricting and Pass identity rules each certificate
    /// identity satisfies (pseudo-groups of `Universe::certified`), CSR
    /// layout as for groups: when the factors disagree, the rules either
    /// factor satisfies are the owner's group list and this one, so the walk
    /// never evaluates a selector on the request path.
    cert_offsets: Vec<u32>,
    cert_rules: Vec<u32>,
    policies_selecting: usize,
    needs: Needs,
}

/// Which request facts any applicable rule reads, so the proxy can skip the
/// host calls for the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub source_port: bool,
    pub destination_ip: bool,
    pub destination_port: bool,
    pub http: bool,
}

impl WorkloadPolicy {
    pub fn new(set: Arc<PolicySet>, workload: &Workload) -> WorkloadPolicy {
        let local = Group::new(&workload.namespace, &workload.service_account, &workload.labels);
        let universe = &set.universe;

        let mut tiers: Vec<TierSlice> = Vec::new();
        let mut rules: Vec<u32> = Vec::new();
        let mut policies_selecting = 0;
        for policy in &set.policies {
            let selects = policy.selects(&workload.namespace, &workload.service_account, &local.labels, universe);
            if !selects {
                continue;
            }
            policies_selecting += 1;
            let Some(tier) = set.tiers.get(policy.tier) else { continue };
            if tiers.last().is_none_or(|t| t.name != tier.name) {
                let at = position(rules.len());
                tiers.push(TierSlice { name: tier.name.clone(), default_action: tier.default_action, start: at, end: at });
            }
            for index in policy.rules.clone() {
                let Some(rule) = set.rules.get(index) else { continue };
                // Settled now: protocol, and the destination identity (this workload).
                if rule.matches_tcp && rule.destination.identity.matches(SourceView::Pod(&local), universe) {
                    rules.push(position(index));
                }
            }
            if let Some(t) = tiers.last_mut() {
                t.end = position(rules.len());
            }
        }

        let resolve = |set: &Option<PortSet>, names: &[String]| {
            set.as_ref().map(|s| s.with(names.iter().filter_map(|n| workload.ports.get(n)).map(|&p| (p, p))))
        };
        let mut resolved_ports = Vec::new();
        for (pos, rule) in (0u32..).zip(&rules).filter_map(|(pos, &i)| set.rules.get(i as usize).map(|r| (pos, r))) {
            let d = &rule.destination;
            if d.has_port_names() {
                resolved_ports.push((pos, resolve(&d.ports, &d.port_names), resolve(&d.not_ports, &d.not_port_names)));
            }
        }
        let mut needs = Needs::default();
        for rule in rules.iter().filter_map(|&i| set.rules.get(i as usize)) {
            needs.source_port |= rule.source.ports.is_some() || rule.source.not_ports.is_some();
            needs.destination_ip |= rule.destination.nets.is_some() || rule.destination.not_nets.is_some();
            needs.destination_port |= rule.destination.ports.is_some() || rule.destination.not_ports.is_some();
            needs.http |= rule.http.is_some();
        }

        let groups = universe.group_count();
        let mut per_group: Vec<Vec<u32>> = vec![Vec::new(); groups];
        let mut free = Vec::new();
        let mut unknown = Vec::new();
        let mut restricting = Vec::new();
        let mut deny_by_identity = false;
        let certified = universe.certified();
        let mut per_cert: Vec<Vec<u32>> = vec![Vec::new(); certified.map_or(0, Universe::group_count)];
        for (pos, &index) in (0u32..).zip(&rules) {
            let Some(rule) = set.rules.get(index as usize) else { continue };
            let identity = &rule.source.identity;
            if identity.is_empty() {
                free.push(pos);
                continue;
            }
            if matches!(rule.action, Action::Deny | Action::Log | Action::Pass) {
                deny_by_identity = true;
                restricting.push(pos);
                for c in certified.map(|u| identity.matching_groups(u)).iter().flat_map(FixedBitSet::ones) {
                    if let Some(list) = per_cert.get_mut(c) {
                        list.push(pos);
                    }
                }
            }
            for g in identity.matching_groups(universe).ones() {
                if let Some(list) = per_group.get_mut(g) {
                    list.push(pos);
                }
            }
            if identity.matches_unknown() {
                unknown.push(pos);
            }
        }
        let (group_offsets, group_rules) = csr(per_group);
        let (cert_offsets, cert_rules) = csr(per_cert);
        WorkloadPolicy {
            set,
            tiers,
            rules,
            resolved_ports,
            free,
            group_offsets,
            group_rules,
            unknown,
            restricting,
            deny_by_identity,
            cert_offsets,
            cert_rules,
            policies_selecting,
            needs,
        }
    }

    /// Which request facts the applicable rules read.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    pub fn policy_set(&self) -> &PolicySet {
        &self.set
    }

    /// How many policies select this workload.
    pub fn policies_selecting(&self) -> usize {
        self.policies_selecting
    }

    /// How many rules could decide a request to this workload.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Decides one request.
    pub fn decide<'p, 'r>(&'p self, facts: &RequestFacts<'r>) -> Decision<'p, 'r> {
        self.decide_logging(facts, &mut |_| {})
    }

    /// Decides one request; `on_log` sees every matching Log rule.
    pub fn decide_logging<'p, 'r>(&'p self, facts: &RequestFacts<'r>, on_log: &mut dyn FnMut(&Rule)) -> Decision<'p, 'r> {
        let (identity, group) = self.identify(facts);
        let none: &[u32] = &[];
        let candidates = match identity {
            // Factors agree (or only the address speaks): the group's list is exact.
            IdentityCheck::Address { .. } | IdentityCheck::Verified { .. } => {
                Candidates::Lists { lists: [&self.free, self.group_list(group), none], identity: Judged::Settled }
            }
            IdentityCheck::UnknownAddress { .. } if !self.deny_by_identity => {
                Candidates::Lists { lists: [&self.free, &self.unknown, none], identity: Judged::Settled }
            }
            // A certificate from an unknown address: Allow rules see an unknown
            // address, restricting and Pass ones also the certificate.
            IdentityCheck::UnknownAddress { certified } => {
                let (certificate, identity) = self.cert_list(&certified, true);
                Candidates::Lists { lists: [&self.free, &self.unknown, certificate], identity }
            }
            // Factors disagree: Allow identity rules cannot match; restricting
            // and Pass rules matter if either factor satisfies them.
            IdentityCheck::Mismatch { certified, .. } => {
                let (certificate, identity) = self.cert_list(&certified, false);
                Candidates::Lists { lists: [&self.free, self.group_list(group), certificate], identity }
            }
            // No SPIFFE id: the certificate reads as an unknown source.
            IdentityCheck::NoSpiffeId { .. } => Candidates::Lists {
                lists: [&self.free, self.group_list(group), &self.unknown],
                identity: Judged::ByMembership { allow_by_address: false, deny_by_certificate: false },
            },
        };
        self.walk(facts, identity, candidates, on_log)
    }

    /// The same decision without the index: every applicable rule is checked
    /// directly. The indexed path must always agree with it (tested).
    pub fn decide_unindexed<'p, 'r>(&'p self, facts: &RequestFacts<'r>) -> Decision<'p, 'r> {
        let (identity, _) = self.identify(facts);
        self.walk(facts, identity, Candidates::All, &mut |_| {})
    }

    /// Destination (ports, notPorts) for the rule at `pos`, names resolved.
    fn resolved_ports<'a>(&'a self, pos: u32, rule: &'a Rule) -> (Option<&'a PortSet>, Option<&'a PortSet>) {
        if !rule.destination.has_port_names() {
            return (rule.destination.ports.as_ref(), rule.destination.not_ports.as_ref());
        }
        match self.resolved_ports.binary_search_by_key(&pos, |(p, _, _)| *p) {
            Ok(i) => self.resolved_ports.get(i).map_or((None, None), |(_, a, b)| (a.as_ref(), b.as_ref())),
            Err(_) => (rule.destination.ports.as_ref(), rule.destination.not_ports.as_ref()),
        }
    }

    fn group_list(&self, group: Option<u32>) -> &[u32] {
        let Some(g) = group else { return &self.unknown };
        let g = g as usize;
        match (self.group_offsets.get(g), self.group_offsets.get(g + 1)) {
            (Some(&lo), Some(&hi)) => self.group_rules.get(lo as usize..hi as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Restricting and Pass rules the certificate's identity satisfies, judged
    /// by membership; for an identity the config does not know, every
    /// restricting and Pass identity rule, judged by evaluating its clauses.
    fn cert_list(&self, certified: &SpiffeId<'_>, allow_by_address: bool) -> (&[u32], Judged) {
        let universe = &self.set.universe;
        let c = universe.certified_id(certified.namespace, certified.service_account).map(|c| c as usize);
        match c.map(|c| (self.cert_offsets.get(c), self.cert_offsets.get(c + 1))) {
            Some((Some(&lo), Some(&hi))) => (
                self.cert_rules.get(lo as usize..hi as usize).unwrap_or(&[]),
                Judged::ByMembership { allow_by_address, deny_by_certificate: true },
            ),
            _ => (&self.restricting, Judged::Evaluate),
        }
    }

    /// Compares the two factors: the certificate and the owner of the address.
    /// Also returns the owner's group id for the index.
    fn identify<'p, 'r>(&'p self, facts: &RequestFacts<'r>) -> (IdentityCheck<'p, 'r>, Option<u32>) {
        let universe = &self.set.universe;
        let group = facts.source_ip.and_then(|ip| universe.owner_of(ip));
        let owner = group.and_then(|g| universe.group(g));
        let check = match facts.peer {
            Peer::Plaintext => IdentityCheck::Address { owner },
            Peer::Mtls { uri_san } => match uri_san.and_then(SpiffeId::parse) {
                None => IdentityCheck::NoSpiffeId { uri_san, owner },
                Some(certified) => match owner {
                    None => IdentityCheck::UnknownAddress { certified },
                    Some(g) if g.namespace == certified.namespace && g.service_account == certified.service_account => {
                        IdentityCheck::Verified { owner: g }
                    }
                    Some(g) => IdentityCheck::Mismatch { certified, owner: g },
                },
            },
        };
        (check, group)
    }

    /// Source identity clauses under both factors. Allow rules need the
    /// factors to agree; Deny and Log rules match if either factor satisfies
    /// them. A Pass rule is [`SourceMatch::Disputed`] when the factors disagree
    /// and so do their readings of its clauses (a certificate without a SPIFFE
    /// id reads as an unknown source): passing can loosen (skip a later Deny
    /// of its tier) or tighten (skip a later Allow), so the walk takes the
    /// stricter outcome. A disagreement never loosens policy.
    fn source_identity_matches(&self, rule: &Rule, identity: &IdentityCheck<'_, '_>) -> SourceMatch {
        let clause = &rule.source.identity;
        if clause.is_empty() {
            return SourceMatch::Yes;
        }
        let universe = &self.set.universe;
        let restricts = matches!(rule.action, Action::Deny | Action::Log);
        let by_owner = |owner: Option<&Group>| clause.matches(owner.map_or(SourceView::Unknown, SourceView::Pod), universe);
        let by_cert = |id: &SpiffeId<'_>| {
            clause.matches(SourceView::Certified { namespace: id.namespace, service_account: id.service_account }, universe)
        };
        let agreed = |m: bool| if m { SourceMatch::Yes } else { SourceMatch::No };
        if rule.action == Action::Pass {
            let (address, certificate) = match identity {
                IdentityCheck::Address { owner } => return agreed(by_owner(*owner)),
                IdentityCheck::Verified { owner } => return agreed(by_owner(Some(owner))),
                IdentityCheck::UnknownAddress { certified } => (by_owner(None), by_cert(certified)),
                IdentityCheck::Mismatch { certified, owner } => (by_owner(Some(owner)), by_cert(certified)),
                IdentityCheck::NoSpiffeId { owner, .. } => (by_owner(*owner), by_owner(None)),
            };
            return if address == certificate { agreed(address) } else { SourceMatch::Disputed };
        }
        agreed(match identity {
            IdentityCheck::Address { owner } => by_owner(*owner),
            IdentityCheck::Verified { owner } => by_owner(Some(owner)),
            IdentityCheck::UnknownAddress { certified } => by_owner(None) || (restricts && by_cert(certified)),
            IdentityCheck::Mismatch { certified, owner } => restricts && (by_owner(Some(owner)) || by_cert(certified)),
            IdentityCheck::NoSpiffeId { owner, .. } => restricts && by_owner(*owner),
        })
    }

    fn walk<'p, 'r>(
        &'p self,
        facts: &RequestFacts<'r>,
        identity: IdentityCheck<'p, 'r>,
        candidates: Candidates<'_>,
        on_log: &mut dyn FnMut(&Rule),
    ) -> Decision<'p, 'r> {
        let decision = |reason: Reason, rule: Option<&'p Rule>, tier: Option<&'p str>| Decision {
            verdict: reason.verdict(),
            reason,
            rule,
            policy: rule.and_then(|r| self.set.policies.get(r.policy)),
            tier,
            identity,
            source_ip: facts.source_ip,
        };
        let mut path = PathCache::new(facts.path);
        // An Allow reached after a disputed Pass in its tier stands only if the
        // other reading (the Pass taken: on to the next tiers) allows too; it
        // waits here while the walk continues with that reading.
        let mut pending_allow = None;
        for tier in &self.tiers {
            let mut cursor = candidates.cursor(tier.start);
            let mut passed = false;
            let mut disputed_pass = false;
            while let Some((pos, members)) = cursor.next_below(tier.end) {
                let Some(rule) = self.rules.get(pos as usize).and_then(|&i| self.set.rules.get(i as usize)) else {
                    continue;
                };
                let source = match candidates.identity() {
                    Judged::Settled => SourceMatch::Yes,
                    Judged::ByMembership { allow_by_address, deny_by_certificate } => {
                        by_membership(rule, members, allow_by_address, deny_by_certificate)
                    }
                    Judged::Evaluate => self.source_identity_matches(rule, &identity),
                };
                if source == SourceMatch::No || !rest_matches(rule, self.resolved_ports(pos, rule), facts, &mut path) {
                    continue;
                }
                match rule.action {
                    _ if source == SourceMatch::Disputed => disputed_pass = true,
                    Action::Allow if disputed_pass => {
                        pending_allow = pending_allow.or(Some(decision(Reason::AllowRule, Some(rule), Some(&tier.name))));
                        passed = true;
                        break;
                    }
                    Action::Allow => return pending_allow.unwrap_or(decision(Reason::AllowRule, Some(rule), Some(&tier.name))),
                    Action::Deny => return decision(Reason::DenyRule, Some(rule), Some(&tier.name)),
                    Action::Log => on_log(rule),
                    Action::Pass => {
                        passed = true;
                        break;
                    }
                }
            }
            if !passed && tier.default_action == TierDefaultAction::Deny {
                return decision(Reason::TierDefaultDeny, None, Some(&tier.name));
            }
        }
        let reason = if self.tiers.is_empty() { Reason::NoPolicySelects } else { Reason::AllTiersPassed };
        pending_allow.unwrap_or(decision(reason, None, None))
    }
}

/// How a rule's source identity clauses judge a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceMatch {
    No,
    Yes,
    /// A Pass rule that one factor's reading satisfies and the other's does
    /// not, while the factors disagree.
    Disputed,
}

/// Per-id lists in one buffer: id i's are `values[offsets[i]..offsets[i+1]]`.
fn csr(lists: Vec<Vec<u32>>) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = Vec::with_capacity(lists.len() + 1);
    let mut values = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    offsets.push(0);
    for list in lists {
        values.extend(list);
        offsets.push(position(values.len()));
    }
    (offsets, values)
}

/// [`WorkloadPolicy::source_identity_matches`] when the factors disagree,
/// from which candidate lists hold the rule (see [`Judged::ByMembership`]).
fn by_membership(rule: &Rule, members: u8, allow_by_address: bool, deny_by_certificate: bool) -> SourceMatch {
    if rule.source.identity.is_empty() {
        return SourceMatch::Yes;
    }
    let (address, certificate) = (members & 0b010 != 0, members & 0b100 != 0);
    let agreed = |m: bool| if m { SourceMatch::Yes } else { SourceMatch::No };
    match rule.action {
        Action::Pass if address == certificate => agreed(address),
        Action::Pass => SourceMatch::Disputed,
        Action::Deny | Action::Log => agreed(address || (deny_by_certificate && certificate)),
        Action::Allow => agreed(allow_by_address && address),
    }
}

fn position(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Everything but source identity: IP version, addresses, ports, HTTP.
fn rest_matches(
    rule: &Rule,
    (ports, not_ports): (Option<&PortSet>, Option<&PortSet>),
    facts: &RequestFacts<'_>,
    path: &mut PathCache<'_>,
) -> bool {
    let restricts = matches!(rule.action, Action::Deny | Action::Log);
    if let Some(version) = rule.ip_version {
        let family = match facts.source_ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(_)) => Some(4),
            Some(IpAddr::V6(_)) => Some(6),
            None => None,
        };
        if family.map_or(!restricts, |f| f != version) {
            return false;
        }
    }
    if !rule.source.matches_address(facts.source_ip, facts.source_port, restricts)
        || !rule.destination.matches_address_with(facts.destination_ip, facts.destination_port, restricts, ports, not_ports)
    {
        return false;
    }
    let Some(http) = &rule.http else { return true };
    let (Some(method), Some(_)) = (facts.method, facts.path) else {
        return false; // an http clause never matches a non-HTTP request
    };
    if !http.method_matches(method) {
        return false;
    }
    if http.paths.is_empty() {
        return true;
    }
    // A path that cannot be normalised matches no path rule (only Allow rules have them).
    path.get().is_some_and(|p| http.path_matches(p))
}

/// The request path, normalised at most once per request and only if a rule asks.
struct PathCache<'r> {
    raw: Option<&'r str>,
    normalised: Option<Result<Cow<'r, str>, PathError>>,
}

impl<'r> PathCache<'r> {
    fn new(raw: Option<&'r str>) -> Self {
        PathCache { raw, normalised: None }
    }

    fn get(&mut self) -> Option<&str> {
        let raw = self.raw?;
        self.normalised.get_or_insert_with(|| normalize(raw)).as_deref().ok()
    }
}

/// Which rule positions a walk considers.
#[derive(Clone, Copy)]
enum Candidates<'a> {
    /// The union of sorted position lists, and how their source identity
    /// clauses are judged.
    Lists { lists: [&'a [u32]; 3], identity: Judged },
    /// Every rule, identity checked directly (the reference walk).
    All,
}

/// How the walk judges a candidate's source identity clauses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// Membership in the lists settles them: every candidate matches.
    Settled,
    /// The factors disagree and the lists are `[free, rules the address's
    /// reading satisfies, rules the certificate's reading satisfies]`:
    /// membership gives both readings, no selector is evaluated.
    /// `allow_by_address`: Allow rules go by the address (a certificate
    /// from an unknown address), else they never match. `deny_by_certificate`:
    /// Deny and Log rules also match on the certificate's reading (not for a
    /// certificate without a SPIFFE id, which names nobody to deny).
    ByMembership { allow_by_address: bool, deny_by_certificate: bool },
    /// Evaluate the clauses (a certificate identity the index does not know).
    Evaluate,
}

impl<'a> Candidates<'a> {
    fn identity(self) -> Judged {
        match self {
            Candidates::Lists { identity, .. } => identity,
            Candidates::All => Judged::Evaluate,
        }
    }

    fn cursor(self, start: u32) -> Cursor<'a> {
        match self {
            Candidates::Lists { lists, .. } => {
                Cursor::Merge(lists.map(|l| l.get(l.partition_point(|&p| p < start)..).unwrap_or(&[])))
            }
            Candidates::All => Cursor::Range(start),
        }
    }
}

enum Cursor<'a> {
    Merge([&'a [u32]; 3]),
    Range(u32),
}

impl Cursor<'_> {
    /// The next position below `end`, each position once even if several
    /// lists hold it, with which lists hold it (bit i: list i).
    fn next_below(&mut self, end: u32) -> Option<(u32, u8)> {
        match self {
            Cursor::Range(next) => {
                let pos = *next;
                (pos < end).then(|| {
                    *next += 1;
                    (pos, 0)
                })
            }
            Cursor::Merge(lists) => {
                let pos = lists.iter().filter_map(|l| l.first().copied()).min()?;
                if pos >= end {
                    return None;
                }
                let mut members = 0;
                for (bit, list) in lists.iter_mut().enumerate() {
                    if let Some((&head, rest)) = list.split_first() {
                        if head == pos {
                            *list = rest;
                            members |= 1 << bit;
                        }
                    }
                }
                Some((pos, members))
            }
        }
    }
}
