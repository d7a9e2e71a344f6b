//! Specialise a [`PolicySet`] for one workload, then decide requests.
//!
//! At build time: keep only the policies that select the workload and the rules
//! that could match a TCP request to it (destination clauses are about this
//! workload, so they are settled now), and index the rules by the endpoint
//! group that satisfies their source identity clauses. At request time: one
//! hash lookup finds the source's group, then only the rules that group (or no
//! identity clause) admits are walked, in order.

mod classes;
mod decision;
mod egress;
#[cfg(test)]
mod egress_tests;
mod facts;
pub(crate) mod index;
mod staged;
#[cfg(test)]
mod staged_tests;
#[cfg(test)]
mod network_set_tests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

pub use decision::{Decision, IdentityCheck, Reason, Verdict};
pub use egress::{Destination, EgressConnectionVerdict, EgressDecision, EgressFacts, EgressPolicy, Resolved, Target};
pub use facts::{Peer, RequestFacts};
pub use staged::{StagedDifference, StagedWorkload};

use crate::config::{Action, TierDefaultAction};
use crate::model::universe::pod_labels;
use crate::model::{Group, IdentityMatch, Policy, PolicySet, Rule, SourceView, Universe};
use fixedbitset::FixedBitSet;
use classes::{Class, ClassLists, ClassListsBuilder, ClauseId, Reading};
use index::{position, FreeIndex, Merge, Positions};
use index::{ADDRESS_ALLOW, ADDRESS_PASS, ADDRESS_RESTRICT, CERTIFICATE_PASS, CERTIFICATE_RESTRICT, FREE};
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

impl Workload {
    /// This workload as the identity clauses read it, given its labels as
    /// [`pod_labels`] completes them.
    pub fn as_source<'a>(&'a self, labels: &'a BTreeMap<String, String>) -> SourceView<'a> {
        SourceView::Pod { namespace: &self.namespace, service_account: &self.service_account, labels }
    }
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
    /// Rules whose destination clauses network sets take part in, by
    /// position: (position, the destination address must be in a set the
    /// clauses match, as this workload's labels do not). A set `notSelector`
    /// matches excludes its addresses either way.
    destination_sets: Vec<(u32, bool)>,
    /// Positions (into `rules`) of rules without source identity clauses,
    /// narrowed by source address.
    free: FreeIndex,
    /// Positions of identity rules each reading of the source address
    /// satisfies, by class: endpoint group g is reading g, an unknown address
    /// reading `unknown_reading`.
    by_address: ClassLists,
    unknown_reading: usize,
    /// Positions of Pass and Deny/Log identity rules each certificate identity
    /// satisfies (pseudo-groups of `Universe::certified`): when the factors
    /// disagree, which of the owner's and the certificate's lists hold a rule
    /// judges it, so the walk never evaluates a selector on the request path.
    by_certificate: ClassLists,
    /// Positions of identity rules that restrict (Deny/Log) or pass (Pass):
    /// the only identity rules that can have an effect when the two factors
    /// disagree (walked with clauses evaluated for a certificate identity the
    /// config does not know).
    restricting: Vec<u32>,
    /// Some Deny/Log/Pass rule has source identity clauses: a certificate from
    /// an unknown address then needs the two-reading walk (such rules take either factor).
    deny_by_identity: bool,
    /// Positions (into `set.policies`) of the policies that select the
    /// workload, in evaluation order.
    selecting: Vec<u32>,
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
        let local_labels = pod_labels(&workload.namespace, &workload.service_account, &workload.labels);
        let local = workload.as_source(&local_labels);
        let universe = &set.universe;

        let mut tiers: Vec<TierSlice> = Vec::new();
        let mut rules: Vec<u32> = Vec::new();
        let mut selecting = Vec::new();
        let mut destination_sets = Vec::new();
        for (index, policy) in set.policies.iter().enumerate() {
            let selects = policy.selects(&workload.namespace, &workload.service_account, &local_labels, universe);
            if !selects {
                continue;
            }
            selecting.push(position(index));
            let Some(tier) = set.tiers.get(policy.tier) else { continue };
            if tiers.last().is_none_or(|t| t.name != tier.name) {
                let at = position(rules.len());
                tiers.push(TierSlice { name: tier.name.clone(), default_action: tier.default_action, start: at, end: at });
            }
            for index in policy.rules.clone() {
                let Some(rule) = set.rules.get(index) else { continue };
                // Settled now: protocol, and the destination identity (this
                // workload), except where a network set may hold its address.
                if !rule.matches_tcp {
                    continue;
                }
                let destination = &rule.destination.identity;
                if destination.matches(local, universe) {
                    if destination.not_set_nets.is_some() {
                        destination_sets.push((position(rules.len()), false));
                    }
                    rules.push(position(index));
                } else if destination.set_nets.is_some()
                    && !destination.not_selector.as_ref().is_some_and(|s| {
                        s.matches(&universe.inherited(&workload.namespace, &workload.service_account, &local_labels))
                    })
                {
                    destination_sets.push((position(rules.len()), true));
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
            needs.destination_ip |= rule.destination.nets.is_some()
                || rule.destination.not_nets.is_some()
                || rule.destination.identity.depends_on_sets();
            needs.destination_port |= rule.destination.ports.is_some() || rule.destination.not_ports.is_some();
            needs.http |= rule.http.is_some();
        }

        let unknown_reading = universe.group_count();
        let mut by_address = ClassListsBuilder::new(unknown_reading + 1);
        let mut free = Vec::new();
        let mut restricting = Vec::new();
        let mut deny_by_identity = false;
        let certified = universe.certified();
        let mut by_certificate = ClassListsBuilder::new(certified.map_or(0, Universe::group_count));
        // Rules share source clauses (at Calico's shape ~1.9 rules a clause
        // over the whole config): each distinct clause's readings are found
        // once per class of rule it serves, refine that class's partition,
        // and are let go.
        let mut address_clauses: HashMap<(&IdentityMatch, Class), ClauseId> = HashMap::new();
        let mut certificate_clauses: HashMap<(&IdentityMatch, Class), ClauseId> = HashMap::new();
        for (pos, &index) in (0u32..).zip(&rules) {
            let Some(rule) = set.rules.get(index as usize) else { continue };
            let identity = &rule.source.identity;
            // A rule that network sets take part in is listed with the free
            // ones (narrowed by its own nets alike) and its clauses are
            // evaluated for the address: no reading of the owner settles it.
            if identity.is_empty() || identity.depends_on_sets() {
                free.push((pos, rule.source.nets.as_ref()));
                continue;
            }
            let class = Class::of(rule.action);
            if class != Class::Allow {
                deny_by_identity = true;
                restricting.push(pos);
                let clause = *certificate_clauses.entry((identity, class)).or_insert_with(|| {
                    let readings: Vec<u32> =
                        certified.map(|u| identity.matching_groups(u)).iter().flat_map(FixedBitSet::ones).map(position).collect();
                    by_certificate.clause(class, &readings)
                });
                by_certificate.add(clause, pos);
            }
            let clause = *address_clauses.entry((identity, class)).or_insert_with(|| {
                let mut readings: Vec<u32> = identity.matching_groups(universe).ones().map(position).collect();
                if identity.matches_unknown() {
                    readings.push(position(unknown_reading));
                }
                by_address.clause(class, &readings)
            });
            by_address.add(clause, pos);
        }
        // The clause maps are done with: freed before the rows are allocated,
        // which lowers the peak (Wasm memory never shrinks).
        drop((address_clauses, certificate_clauses));
        WorkloadPolicy {
            free: FreeIndex::new(&free),
            set,
            tiers,
            rules,
            resolved_ports,
            destination_sets,
            by_address: by_address.build(),
            unknown_reading,
            by_certificate: by_certificate.build(),
            restricting,
            deny_by_identity,
            selecting,
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
        self.selecting.len()
    }

    /// The policies that select this workload, with their positions in
    /// [`PolicySet::policies`] (what [`Rule::policy`] holds), in evaluation order.
    pub fn selecting_policies(&self) -> impl Iterator<Item = (usize, &Policy)> + '_ {
        self.selecting.iter().filter_map(|&i| self.set.policies.get(i as usize).map(|p| (i as usize, p)))
    }

    /// Names of the tiers whose policies select this workload, in evaluation
    /// order: the only tiers a [`Decision::tier`] can name.
    pub fn tier_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tiers.iter().map(|t| t.name.as_str())
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
        let candidates = self.candidates(facts, &identity, group);
        self.walk(facts, identity, candidates, on_log, HttpReading::Request)
    }

    /// The rule lists a request's walk merges, and how they judge identity.
    fn candidates<'p>(&'p self, facts: &RequestFacts<'_>, identity: &IdentityCheck<'_, '_>, group: Option<u32>) -> Candidates<'p> {
        let address = self.by_address.reading(group.map_or(self.unknown_reading, |g| g as usize));
        let plan = |certificate: Reading<'p>, identity: Judged| {
            Candidates::Lists(Plan { free: self.free.candidates(facts.source_ip), address, certificate, identity })
        };
        match *identity {
            // Factors agree (or only the address speaks): the address's lists are exact.
            IdentityCheck::Address { .. } | IdentityCheck::Verified { .. } => plan(Reading::default(), Judged::Settled),
            IdentityCheck::UnknownAddress { .. } if !self.deny_by_identity => plan(Reading::default(), Judged::Settled),
            // A certificate from an unknown address: Allow rules see an unknown
            // address, restricting and Pass ones also the certificate.
            IdentityCheck::UnknownAddress { certified } => {
                let (certificate, identity) = self.certificate_reading(&certified, true);
                plan(certificate, identity)
            }
            // Factors disagree: Allow identity rules cannot match; restricting
            // and Pass rules matter if either factor satisfies them.
            IdentityCheck::Mismatch { certified, .. } => {
                let (certificate, identity) = self.certificate_reading(&certified, false);
                plan(certificate, identity)
            }
            // No SPIFFE id: the certificate reads as an unknown source.
            IdentityCheck::NoSpiffeId { .. } => plan(
                self.by_address.reading(self.unknown_reading),
                Judged::ByMembership { allow_by_address: false, deny_by_certificate: false },
            ),
        }
    }

    /// Decides a connection before any request on it is read (the NETWORK
    /// role: Istio's TCP chains have no HTTP filters at all). `facts` must
    /// carry no method or path. Rules with an `http` clause never match a
    /// connection; when the connection is denied as such, the engine asks
    /// once more whether *some* HTTP request on it could be allowed (every
    /// `http` clause of an Allow rule read as matching, which can only allow
    /// more: `http` is valid on Allow rules alone). Only then may a proxy
    /// leave the connection to the per-request decision, and only where an
    /// HTTP filter will make it.
    pub fn decide_connection<'p, 'r>(&'p self, facts: &RequestFacts<'r>) -> ConnectionVerdict<'p, 'r> {
        let connection = RequestFacts { method: None, path: None, ..*facts };
        let tcp = self.decide(&connection);
        if tcp.allowed() {
            return ConnectionVerdict::Allow(tcp);
        }
        if !self.needs.http {
            return ConnectionVerdict::Deny(tcp);
        }
        let (identity, group) = self.identify(&connection);
        let candidates = self.candidates(&connection, &identity, group);
        let any_http = self.walk(&connection, identity, candidates, &mut |_| {}, HttpReading::Any);
        if any_http.allowed() {
            ConnectionVerdict::HttpDecides(tcp)
        } else {
            ConnectionVerdict::Deny(tcp)
        }
    }

    /// The same decision without the index: every applicable rule is checked
    /// directly. The indexed path must always agree with it (tested).
    pub fn decide_unindexed<'p, 'r>(&'p self, facts: &RequestFacts<'r>) -> Decision<'p, 'r> {
        let (identity, _) = self.identify(facts);
        self.walk(facts, identity, Candidates::All, &mut |_| {}, HttpReading::Request)
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

    /// The destination clauses' network-set part for the rule at `pos` (the
    /// rest was settled for this workload in `new`). An unknown destination
    /// address fails a rule that grants and passes one that restricts.
    fn destination_in_sets(&self, pos: u32, rule: &Rule, facts: &RequestFacts<'_>) -> bool {
        let clause = &rule.destination.identity;
        if !clause.depends_on_sets() {
            return true;
        }
        let Ok(i) = self.destination_sets.binary_search_by_key(&pos, |&(p, _)| p) else {
            return true;
        };
        let requires_set = self.destination_sets.get(i).is_some_and(|&(_, r)| r);
        let Some(ip) = facts.destination_ip else {
            return matches!(rule.action, Action::Deny | Action::Log);
        };
        let holds = |nets: &Option<crate::ranges::NetSet>| nets.as_ref().is_some_and(|n| n.contains(ip));
        !holds(&clause.not_set_nets) && (!requires_set || holds(&clause.set_nets))
    }

    /// Restricting and Pass rules the certificate's identity satisfies, judged
    /// by membership; for an identity the config does not know, every
    /// restricting and Pass identity rule, judged by evaluating its clauses.
    fn certificate_reading(&self, certified: &SpiffeId<'_>, allow_by_address: bool) -> (Reading<'_>, Judged) {
        let universe = &self.set.universe;
        match universe.certified_id(certified.namespace, certified.service_account) {
            Some(c) => (
                self.by_certificate.reading(c as usize),
                Judged::ByMembership { allow_by_address, deny_by_certificate: true },
            ),
            None => (Reading { restrict: self.restricting[..].into(), ..Reading::default() }, Judged::Evaluate { allow_by_address }),
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
                    Some(g) if g.namespace() == certified.namespace && g.service_account() == certified.service_account => {
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
    /// The address's reading includes the network sets that hold it; the
    /// certificate's names a pod identity only, never a set.
    fn source_identity_matches(&self, rule: &Rule, identity: &IdentityCheck<'_, '_>, facts: &RequestFacts<'_>) -> SourceMatch {
        let clause = &rule.source.identity;
        if clause.is_empty() {
            return SourceMatch::Yes;
        }
        let universe = &self.set.universe;
        let restricts = matches!(rule.action, Action::Deny | Action::Log);
        let by_owner = |owner: Option<Group<'_>>| {
            clause.matches_at(owner.as_ref().map_or(SourceView::Unknown, Group::as_source), facts.source_ip, universe)
        };
        let by_cert = |id: &SpiffeId<'_>| {
            clause.matches(SourceView::Certified { namespace: id.namespace, service_account: id.service_account }, universe)
        };
        let agreed = |m: bool| if m { SourceMatch::Yes } else { SourceMatch::No };
        if rule.action == Action::Pass {
            let (address, certificate) = match identity {
                IdentityCheck::Address { owner } => return agreed(by_owner(*owner)),
                IdentityCheck::Verified { owner } => return agreed(by_owner(Some(*owner))),
                IdentityCheck::UnknownAddress { certified } => (by_owner(None), by_cert(certified)),
                IdentityCheck::Mismatch { certified, owner } => (by_owner(Some(*owner)), by_cert(certified)),
                IdentityCheck::NoSpiffeId { owner, .. } => (by_owner(*owner), by_owner(None)),
            };
            return if address == certificate { agreed(address) } else { SourceMatch::Disputed };
        }
        agreed(match identity {
            IdentityCheck::Address { owner } => by_owner(*owner),
            IdentityCheck::Verified { owner } => by_owner(Some(*owner)),
            IdentityCheck::UnknownAddress { certified } => by_owner(None) || (restricts && by_cert(certified)),
            IdentityCheck::Mismatch { certified, owner } => restricts && (by_owner(Some(*owner)) || by_cert(certified)),
            IdentityCheck::NoSpiffeId { owner, .. } => restricts && by_owner(*owner),
        })
    }

    fn walk<'p, 'r>(
        &'p self,
        facts: &RequestFacts<'r>,
        identity: IdentityCheck<'p, 'r>,
        candidates: Candidates<'_>,
        on_log: &mut dyn FnMut(&Rule),
        http: HttpReading,
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
            let mut cursor = candidates.cursor(tier.start, false);
            let mut passed = false;
            let mut disputed_pass = false;
            while let Some((pos, members)) = cursor.next_below(tier.end) {
                // Judged before the rule is read: membership alone often settles it.
                let judged = match candidates.identity() {
                    Judged::Settled => Some(SourceMatch::Yes),
                    Judged::ByMembership { allow_by_address, deny_by_certificate } => {
                        Some(by_membership(members, allow_by_address, deny_by_certificate))
                    }
                    Judged::Evaluate { .. } => None,
                };
                if judged == Some(SourceMatch::No) {
                    continue;
                }
                let Some(rule) = self.rules.get(pos as usize).and_then(|&i| self.set.rules.get(i as usize)) else {
                    continue;
                };
                let source = match judged {
                    // Listed as free for the address to decide (see `new`).
                    Some(_) if rule.source.identity.depends_on_sets() => self.source_identity_matches(rule, &identity, facts),
                    Some(judged) => judged,
                    None => self.source_identity_matches(rule, &identity, facts),
                };
                if source == SourceMatch::No
                    || !rest_matches(rule, self.resolved_ports(pos, rule), facts, &mut path, http)
                    || !self.destination_in_sets(pos, rule, facts)
                {
                    continue;
                }
                match rule.action {
                    _ if source == SourceMatch::Disputed => {
                        // The walk now follows the reading that did not pass:
                        // further one-sided Passes change nothing, so the
                        // cursor skips them from here.
                        if !disputed_pass {
                            disputed_pass = true;
                            cursor = candidates.cursor(pos.saturating_add(1), true);
                        }
                    }
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

/// [`WorkloadPolicy::source_identity_matches`] when the factors disagree,
/// from which candidate lists hold the rule (see [`Judged::ByMembership`]):
/// the lists say both the rule's class and which readings it satisfies.
fn by_membership(members: u8, allow_by_address: bool, deny_by_certificate: bool) -> SourceMatch {
    let agreed = |m: bool| if m { SourceMatch::Yes } else { SourceMatch::No };
    if members & FREE != 0 {
        return SourceMatch::Yes;
    }
    if members & (ADDRESS_PASS | CERTIFICATE_PASS) != 0 {
        let (address, certificate) = (members & ADDRESS_PASS != 0, members & CERTIFICATE_PASS != 0);
        return if address == certificate { agreed(address) } else { SourceMatch::Disputed };
    }
    if members & (ADDRESS_RESTRICT | CERTIFICATE_RESTRICT) != 0 {
        return agreed(members & ADDRESS_RESTRICT != 0 || (deny_by_certificate && members & CERTIFICATE_RESTRICT != 0));
    }
    agreed(allow_by_address && members & ADDRESS_ALLOW != 0)
}

/// What a rule's `http` clause is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpReading {
    /// The request's method and path (none: not an HTTP request).
    Request,
    /// Some HTTP request yet to come: an Allow rule's clause could match it.
    /// Restricting rules cannot have one (validated); were one to, it would
    /// not match here, so this reading can only allow more than any request.
    Any,
}

/// What the NETWORK role may do with a connection (see
/// [`WorkloadPolicy::decide_connection`]). Each carries the decision for the
/// connection itself (no method, no path).
#[derive(Debug, Clone, Copy)]
pub enum ConnectionVerdict<'p, 'r> {
    /// Allowed as a connection: any byte stream, any request.
    Allow(Decision<'p, 'r>),
    /// Denied as a connection, but an `http` rule could allow some request
    /// on it: only an HTTP filter, per request, can decide. A proxy with no
    /// HTTP filter on the connection (Istio's TCP chains) must deny it.
    HttpDecides(Decision<'p, 'r>),
    /// No request on the connection, HTTP or not, can be allowed.
    Deny(Decision<'p, 'r>),
}

impl<'p, 'r> ConnectionVerdict<'p, 'r> {
    /// The decision for the connection itself.
    pub fn decision(&self) -> &Decision<'p, 'r> {
        match self {
            ConnectionVerdict::Allow(d) | ConnectionVerdict::HttpDecides(d) | ConnectionVerdict::Deny(d) => d,
        }
    }
}

/// Everything but source identity: IP version, addresses, ports, HTTP.
fn rest_matches(
    rule: &Rule,
    (ports, not_ports): (Option<&PortSet>, Option<&PortSet>),
    facts: &RequestFacts<'_>,
    path: &mut PathCache<'_>,
    reading: HttpReading,
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
    if reading == HttpReading::Any {
        return rule.action == Action::Allow;
    }
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
    let directory = path.names_directory();
    path.get().is_some_and(|p| http.path_matches(p, directory))
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

    fn names_directory(&self) -> bool {
        self.raw.is_some_and(crate::path::names_directory)
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
    Lists(Plan<'a>),
    /// Every rule, identity checked directly (the reference walk).
    All,
}

/// The lists one request's walk merges.
#[derive(Clone, Copy)]
struct Plan<'a> {
    /// Free rules the source address can match.
    free: [&'a [u32]; 2],
    /// Identity rules the address's reading satisfies (the owner's group, or
    /// an unknown address).
    address: Reading<'a>,
    /// When the factors disagree: those the certificate's reading satisfies.
    certificate: Reading<'a>,
    identity: Judged,
}

/// How the walk judges a candidate's source identity clauses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// Membership in the lists settles them: every candidate matches.
    Settled,
    /// The factors disagree; membership in the address's and the
    /// certificate's lists gives both readings, no selector is evaluated.
    /// `allow_by_address`: Allow rules go by the address (a certificate
    /// from an unknown address), else they never match. `deny_by_certificate`:
    /// Deny and Log rules also match on the certificate's reading (not for a
    /// certificate without a SPIFFE id, which names nobody to deny).
    ByMembership { allow_by_address: bool, deny_by_certificate: bool },
    /// Evaluate the clauses (a certificate identity the index does not know);
    /// the certificate's `restrict` list then holds every Pass and Deny/Log
    /// identity rule.
    Evaluate { allow_by_address: bool },
}

impl<'a> Candidates<'a> {
    fn identity(self) -> Judged {
        match self {
            Candidates::Lists(plan) => plan.identity,
            Candidates::All => Judged::Evaluate { allow_by_address: false },
        }
    }

    /// A cursor over the tier's candidates from `start`. `after_disputed_pass`:
    /// a Pass only one factor satisfies was taken in this tier, so only rules
    /// that can still change the outcome are listed (free rules, Deny/Log,
    /// Allow where the address decides, and Passes both factors satisfy).
    fn cursor(self, start: u32, after_disputed_pass: bool) -> Cursor<'a> {
        let Candidates::Lists(Plan { free: [free, narrowed], address: a, certificate: c, identity }) = self else {
            return Cursor::Range(start);
        };
        let free = [(free.into(), FREE), (narrowed.into(), FREE)];
        let merge = match identity {
            Judged::Settled => {
                Merge::new(&[free[0], free[1], (a.allow, ADDRESS_ALLOW), (a.pass, ADDRESS_PASS), (a.restrict, ADDRESS_RESTRICT)], None, start)
            }
            Judged::ByMembership { allow_by_address, .. } => {
                let allow = if allow_by_address { a.allow } else { Positions::default() };
                let restrict = [(allow, ADDRESS_ALLOW), (a.restrict, ADDRESS_RESTRICT), (c.restrict, CERTIFICATE_RESTRICT)];
                if after_disputed_pass {
                    let both = (a.pass, c.pass, ADDRESS_PASS | CERTIFICATE_PASS);
                    Merge::new(&[free[0], free[1], restrict[0], restrict[1], restrict[2]], Some(both), start)
                } else {
                    let passes = [(a.pass, ADDRESS_PASS), (c.pass, CERTIFICATE_PASS)];
                    Merge::new(&[free[0], free[1], restrict[0], restrict[1], restrict[2], passes[0], passes[1]], None, start)
                }
            }
            // Clauses are evaluated: the lists only need to hold every rule
            // that could match (the address's Pass and Deny/Log rules are
            // among the certificate's).
            Judged::Evaluate { allow_by_address } => {
                let allow = if allow_by_address { a.allow } else { Positions::default() };
                Merge::new(&[free[0], free[1], (allow, ADDRESS_ALLOW), (c.restrict, CERTIFICATE_RESTRICT)], None, start)
            }
        };
        Cursor::Merge(merge)
    }
}

// One cursor lives on the stack per tier walked; boxing the merge would
// allocate on the request path to save stack the walk uses anyway.
#[allow(clippy::large_enum_variant)]
enum Cursor<'a> {
    Merge(Merge<'a>),
    Range(u32),
}

impl Cursor<'_> {
    /// The next position below `end`, with which lists hold it.
    fn next_below(&mut self, end: u32) -> Option<(u32, u8)> {
        match self {
            Cursor::Range(next) => {
                let pos = *next;
                (pos < end).then(|| {
                    *next += 1;
                    (pos, 0)
                })
            }
            Cursor::Merge(merge) => merge.next_below(end),
        }
    }
}
