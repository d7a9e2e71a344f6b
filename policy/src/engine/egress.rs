//! The egress role: the policies that select a workload decide, on its own
//! sidecar, where it may connect, with Calico's semantics (tiers, order,
//! Allow/Deny/Log/Pass, default deny once an Egress-type policy selects it).
//!
//! The source is the workload itself, known from the proxy's node metadata:
//! rules' source clauses are settled when the policy is built. The
//! destination is what the sidecar knows before its load balancer picks an
//! endpoint (see [`Destination`]). A connection to a Service may reach any of
//! its endpoints, so it is allowed only if the walk allows every endpoint;
//! Calico sees the endpoint itself (kube-proxy's DNAT comes before its egress
//! policy), so each endpoint is read as Calico would read it: its address,
//! the port it serves, its pod's identity.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::{HttpReading, PathCache, TierSlice, Workload};
use crate::config::{Action, TierDefaultAction};
use crate::model::services::parse_outbound_cluster;
use crate::model::universe::pod_labels;
use crate::model::{Group, Policy, PolicySet, Rule, Service, ServicePort, SourceView};
use crate::engine::decision::{Reason, Verdict};

/// Where a connection or request is going, as the client's sidecar knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'r> {
    /// The connection's original destination: a pod address, a ClusterIP,
    /// or an address outside the cluster (Istio's PassthroughCluster).
    Address { ip: Option<IpAddr>, port: Option<u16> },
    /// The cluster Envoy's route or `tcp_proxy` chose, with the connection's
    /// original destination. An Istio outbound cluster of a known Service
    /// (`outbound|<port>|<subset>|<host>`) means that Service's endpoints
    /// behind that port, whatever address the client dialled; a headless
    /// Service's or a non-outbound cluster (`PassthroughCluster`) means the
    /// original destination; an outbound cluster of a host the config does
    /// not know (a ServiceEntry resolved by DNS) means an address not known
    /// here: rules that grant by destination address or identity do not
    /// match it, rules that restrict do.
    Cluster { name: &'r str, ip: Option<IpAddr>, port: Option<u16> },
}

/// What the egress role knows about one connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressFacts<'r> {
    /// The workload's own address and port on the connection.
    pub source_ip: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination: Destination<'r>,
    /// `None` for a connection (no HTTP request): `http` rules never match.
    pub method: Option<&'r str>,
    pub path: Option<&'r str>,
}

/// One place a connection can end up: an address and port, and the pod that
/// owns the address if the config knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'p> {
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    pub owner: Option<Group<'p>>,
}

/// The destination, resolved against the config's Services.
#[derive(Debug, Clone, Copy)]
pub enum Resolved<'p> {
    /// A Service port with endpoints: every one of them must be allowed.
    Service { service: &'p Service, port: &'p ServicePort },
    /// One address (a pod, an outside address, or not known: `ip` None).
    Address { ip: Option<IpAddr>, port: Option<u16> },
}

/// What the egress role may do with a connection no HTTP filter will see.
/// Each carries the decision for the connection itself (no method, no path).
#[derive(Debug, Clone, Copy)]
pub enum EgressConnectionVerdict<'p> {
    Allow(EgressDecision<'p>),
    /// Denied as a connection; only an HTTP request could be allowed.
    HttpDecides(EgressDecision<'p>),
    Deny(EgressDecision<'p>),
}

impl<'p> EgressConnectionVerdict<'p> {
    pub fn decision(&self) -> &EgressDecision<'p> {
        match self {
            EgressConnectionVerdict::Allow(d) | EgressConnectionVerdict::HttpDecides(d) | EgressConnectionVerdict::Deny(d) => d,
        }
    }
}

/// The egress answer, with what it is about.
#[derive(Debug, Clone, Copy)]
pub struct EgressDecision<'p> {
    pub verdict: Verdict,
    pub reason: Reason,
    pub rule: Option<&'p Rule>,
    pub policy: Option<&'p Policy>,
    pub tier: Option<&'p str>,
    /// The endpoint this decision was made for: for a Service, the first one
    /// denied, or (allowed) the first one walked.
    pub target: Target<'p>,
    /// The Service the destination named, if any.
    pub service: Option<&'p Service>,
    /// How many endpoints were walked (1 for an address).
    pub endpoints: usize,
}

impl EgressDecision<'_> {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// The compiled egress policy of one workload.
#[derive(Debug)]
pub struct EgressPolicy {
    set: Arc<PolicySet>,
    tiers: Vec<TierSlice>,
    /// Egress rules that apply to this workload, in evaluation order
    /// (indexes into `set.rules`): source identity settled, TCP only.
    rules: Vec<u32>,
    /// Positions (into `set.policies`) of the policies whose egress selects the workload.
    selecting: Vec<u32>,
    /// Some applicable rule reads the destination address itself (nets,
    /// notNets, network sets): endpoints of one pod group and port can
    /// then decide differently.
    reads_destination_ip: bool,
    /// Some applicable rule has an `http` clause.
    reads_http: bool,
    /// A Service's verdict depends on nothing of the request (no applicable
    /// rule reads HTTP, the source address or port, or logs): it is walked
    /// once per Service port and remembered, since a Service with many
    /// endpoints is one walk per endpoint.
    service_verdicts_cacheable: bool,
    /// Service port (by its address in the immutable policy set) -> the
    /// decision its walk made. Bounded; a proxy's worker thread owns it.
    service_verdicts: RefCell<HashMap<usize, CachedDecision>>,
}

/// An [`EgressDecision`] for a Service, without borrows.
#[derive(Debug, Clone, Copy)]
struct CachedDecision {
    verdict: Verdict,
    reason: Reason,
    /// Index into `PolicySet::rules`.
    rule: Option<usize>,
    /// Index into `EgressPolicy::tiers`.
    tier: Option<usize>,
    target: (Option<IpAddr>, Option<u16>),
    endpoints: usize,
}

/// How many Service ports' verdicts one workload remembers.
const SERVICE_VERDICTS_MAX: usize = 4096;

impl EgressPolicy {
    pub fn new(set: Arc<PolicySet>, workload: &Workload) -> EgressPolicy {
        let local_labels = pod_labels(&workload.namespace, &workload.service_account, &workload.labels);
        let local = workload.as_source(&local_labels);
        let universe = &set.universe;
        let mut tiers: Vec<TierSlice> = Vec::new();
        let mut rules: Vec<u32> = Vec::new();
        let mut selecting = Vec::new();
        for (index, policy) in (0u32..).zip(&set.policies) {
            if !policy.selects_egress(&workload.namespace, &workload.service_account, &local_labels, universe) {
                continue;
            }
            selecting.push(index);
            let Some(tier) = set.tiers.get(policy.tier) else { continue };
            if tiers.last().is_none_or(|t| t.name != tier.name) {
                let at = super::position(rules.len());
                tiers.push(TierSlice { name: tier.name.clone(), default_action: tier.default_action, start: at, end: at });
            }
            for index in policy.egress_rules.clone() {
                let Some(rule) = set.rules.get(index) else { continue };
                // The source is this workload: its identity is settled now
                // (a source Service, by address, is checked per request).
                let source_identity =
                    rule.source.identity.service_nets.is_some() || rule.source.identity.matches(local, universe);
                if rule.matches_tcp && source_identity {
                    rules.push(super::position(index));
                }
            }
            if let Some(t) = tiers.last_mut() {
                t.end = super::position(rules.len());
            }
        }
        let applicable = || rules.iter().filter_map(|&i| set.rules.get(i as usize));
        let reads_destination_ip = applicable().any(|r| {
            r.destination.nets.is_some()
                || r.destination.not_nets.is_some()
                || r.destination.identity.depends_on_sets()
                || r.destination.service.is_some()
        });
        let reads_http = applicable().any(|r| r.http.is_some());
        let per_request = applicable().any(|r| {
            let s = &r.source;
            r.http.is_some()
                || r.action == Action::Log
                || s.nets.is_some()
                || s.not_nets.is_some()
                || s.ports.is_some()
                || s.not_ports.is_some()
                || s.identity.service_nets.is_some()
        });
        EgressPolicy {
            set,
            tiers,
            rules,
            selecting,
            reads_destination_ip,
            reads_http,
            service_verdicts_cacheable: !per_request,
            service_verdicts: RefCell::new(HashMap::new()),
        }
    }

    pub fn policy_set(&self) -> &PolicySet {
        &self.set
    }

    /// How many policies' egress selects this workload (0: everything is allowed).
    pub fn policies_selecting(&self) -> usize {
        self.selecting.len()
    }

    /// The policies whose egress selects this workload, with their positions
    /// in [`PolicySet::policies`], in evaluation order.
    pub fn selecting_policies(&self) -> impl Iterator<Item = (usize, &Policy)> + '_ {
        self.selecting.iter().filter_map(|&i| self.set.policies.get(i as usize).map(|p| (i as usize, p)))
    }

    /// Names of the tiers whose policies select this workload's egress.
    pub fn tier_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tiers.iter().map(|t| t.name.as_str())
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Some applicable rule has an `http` clause: only an HTTP filter can
    /// decide requests it could allow.
    pub fn reads_http(&self) -> bool {
        self.reads_http
    }

    /// Where `destination` can end up, by the config's Services.
    pub fn resolve<'p>(&'p self, destination: &Destination<'_>) -> Resolved<'p> {
        let services = &self.set.services;
        let (ip, port) = match *destination {
            Destination::Address { ip, port } => (ip, port),
            Destination::Cluster { name, ip, port } => match parse_outbound_cluster(name) {
                // Not an outbound Service cluster: the original destination.
                None => (ip, port),
                Some((service_port, host)) => match services.by_host(host) {
                    Some(service) if service.is_headless() => (ip, port),
                    Some(service) => return service_target(service, service_port),
                    None => return Resolved::Address { ip: None, port: Some(service_port) },
                },
            },
        };
        match (ip.and_then(|ip| services.by_cluster_ip(ip)), port) {
            (Some(service), Some(port)) => service_target(service, port),
            // A ClusterIP without a port it serves reaches no pod: no address to read.
            (Some(_), None) => Resolved::Address { ip: None, port },
            (None, _) => Resolved::Address { ip, port },
        }
    }

    /// Decides one connection or request.
    pub fn decide<'p>(&'p self, facts: &EgressFacts<'_>) -> EgressDecision<'p> {
        self.decide_logging(facts, &mut |_| {})
    }

    /// Decides; `on_log` sees every matching Log rule (once per endpoint walked).
    pub fn decide_logging<'p>(&'p self, facts: &EgressFacts<'_>, on_log: &mut dyn FnMut(&Rule)) -> EgressDecision<'p> {
        self.decide_reading(facts, on_log, HttpReading::Request)
    }

    /// Decides a connection no HTTP filter will see (an outbound TCP chain),
    /// as [`super::WorkloadPolicy::decide_connection`] does inbound: rules
    /// with `http` never match a connection; when it is denied, the walk
    /// asks once more whether some HTTP request on it could be allowed
    /// (`http` is valid on Allow rules only, so that reading can only allow
    /// more). A proxy with no HTTP filter on the connection must deny both.
    pub fn decide_connection<'p>(&'p self, facts: &EgressFacts<'_>) -> EgressConnectionVerdict<'p> {
        let connection = EgressFacts { method: None, path: None, ..*facts };
        let tcp = self.decide(&connection);
        if tcp.allowed() {
            return EgressConnectionVerdict::Allow(tcp);
        }
        if self.reads_http && self.decide_reading(&connection, &mut |_| {}, HttpReading::Any).allowed() {
            return EgressConnectionVerdict::HttpDecides(tcp);
        }
        EgressConnectionVerdict::Deny(tcp)
    }

    fn decide_reading<'p>(&'p self, facts: &EgressFacts<'_>, on_log: &mut dyn FnMut(&Rule), http: HttpReading) -> EgressDecision<'p> {
        let mut path = PathCache::new(facts.path);
        match self.resolve(&facts.destination) {
            Resolved::Address { ip, port } => {
                let target = self.target(ip, port);
                self.walk(facts, target, &mut path, on_log, http).with(None, 1)
            }
            Resolved::Service { service, port } => {
                let key = port as *const ServicePort as usize;
                if self.service_verdicts_cacheable {
                    if let Some(d) = self.service_verdicts.try_borrow().ok().and_then(|m| m.get(&key).copied()) {
                        return self.rebuild(d, service);
                    }
                }
                let decided = self.walk_service(facts, service, port, &mut path, on_log, http);
                if self.service_verdicts_cacheable {
                    if let Ok(mut m) = self.service_verdicts.try_borrow_mut() {
                        if m.len() < SERVICE_VERDICTS_MAX {
                            m.insert(key, self.cached(&decided));
                        }
                    }
                }
                decided
            }
        }
    }

    /// Every endpoint behind a Service port must be allowed.
    fn walk_service<'p>(
        &'p self,
        facts: &EgressFacts<'_>,
        service: &'p Service,
        port: &'p ServicePort,
        path: &mut PathCache<'_>,
        on_log: &mut dyn FnMut(&Rule),
        http: HttpReading,
    ) -> EgressDecision<'p> {
        let mut first: Option<EgressDecision<'p>> = None;
        let mut walked = 0usize;
        // Without address-reading rules, endpoints of the same pod
        // group and port decide alike: walk one of each.
        let endpoints = if self.reads_destination_ip { &port.endpoints } else { &port.representatives };
        for endpoint in endpoints {
            walked += 1;
            let target = self.target(Some(endpoint.ip), Some(endpoint.port));
            let decision = self.walk(facts, target, path, on_log, http);
            if !decision.allowed() {
                return decision.with(Some(service), walked);
            }
            first.get_or_insert(decision);
        }
        match first {
            Some(d) => d.with(Some(service), walked),
            None => self.walk(facts, self.target(None, None), path, on_log, http).with(Some(service), 0),
        }
    }

    fn cached(&self, d: &EgressDecision<'_>) -> CachedDecision {
        CachedDecision {
            verdict: d.verdict,
            reason: d.reason,
            rule: d.rule.and_then(|r| self.set.rules.id_of(r)),
            tier: d.tier.and_then(|t| self.tiers.iter().position(|x| x.name == t)),
            target: (d.target.ip, d.target.port),
            endpoints: d.endpoints,
        }
    }

    fn rebuild<'p>(&'p self, d: CachedDecision, service: &'p Service) -> EgressDecision<'p> {
        let rule = d.rule.and_then(|i| self.set.rules.get(i));
        EgressDecision {
            verdict: d.verdict,
            reason: d.reason,
            rule,
            policy: rule.and_then(|r| self.set.policies.get(r.policy)),
            tier: d.tier.and_then(|i| self.tiers.get(i)).map(|t| t.name.as_str()),
            target: self.target(d.target.0, d.target.1),
            service: Some(service),
            endpoints: d.endpoints,
        }
    }

    fn target(&self, ip: Option<IpAddr>, port: Option<u16>) -> Target<'_> {
        let universe = &self.set.universe;
        Target { ip, port, owner: ip.and_then(|ip| universe.owner_of(ip)).and_then(|g| universe.group(g)) }
    }

    fn walk<'p>(
        &'p self,
        facts: &EgressFacts<'_>,
        target: Target<'p>,
        path: &mut PathCache<'_>,
        on_log: &mut dyn FnMut(&Rule),
        http: HttpReading,
    ) -> EgressDecision<'p> {
        let decision = |reason: Reason, rule: Option<&'p Rule>, tier: Option<&'p str>| EgressDecision {
            verdict: reason.verdict(),
            reason,
            rule,
            policy: rule.and_then(|r| self.set.policies.get(r.policy)),
            tier,
            target,
            service: None,
            endpoints: 1,
        };
        for tier in &self.tiers {
            let mut passed = false;
            let positions = self.rules.get(tier.start as usize..tier.end as usize).unwrap_or(&[]);
            for rule in positions.iter().filter_map(|&i| self.set.rules.get(i as usize)) {
                if !self.matches(rule, facts, &target, path, http) {
                    continue;
                }
                match rule.action {
                    Action::Allow => return decision(Reason::AllowRule, Some(rule), Some(&tier.name)),
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
        decision(reason, None, None)
    }

    /// Does `rule` match a connection to `target`? Facts the proxy could not
    /// give fail a rule that grants (Allow, Pass) and satisfy one that
    /// restricts (Deny, Log), so missing facts never loosen policy.
    fn matches(&self, rule: &Rule, facts: &EgressFacts<'_>, target: &Target<'_>, path: &mut PathCache<'_>, reading: HttpReading) -> bool {
        let restricts = matches!(rule.action, Action::Deny | Action::Log);
        if let Some(version) = rule.ip_version {
            let family = match target.ip.or(facts.source_ip).map(|ip| ip.to_canonical()) {
                Some(IpAddr::V4(_)) => Some(4),
                Some(IpAddr::V6(_)) => Some(6),
                None => None,
            };
            if family.map_or(!restricts, |f| f != version) {
                return false;
            }
        }
        if let Some(nets) = &rule.source.identity.service_nets {
            if !facts.source_ip.map_or(restricts, |ip| nets.contains(ip)) {
                return false;
            }
        }
        if !rule.source.matches_address(facts.source_ip, facts.source_port, restricts)
            || !rule.destination.matches_address(target.ip, target.port, restricts)
        {
            return false;
        }
        if let Some(service) = &rule.destination.service {
            let holds = match (target.ip, target.port) {
                (Some(ip), Some(port)) => service.holds(ip, port),
                _ => restricts,
            };
            if !holds {
                return false;
            }
        }
        let identity = &rule.destination.identity;
        if !identity.is_empty() {
            let holds = match target.ip {
                None => restricts,
                Some(ip) => {
                    let view = target.owner.as_ref().map_or(SourceView::Unknown, Group::as_source);
                    identity.matches_at(view, Some(ip), &self.set.universe)
                }
            };
            if !holds {
                return false;
            }
        }
        let Some(http) = &rule.http else { return true };
        if reading == HttpReading::Any {
            return rule.action == Action::Allow;
        }
        let (Some(method), Some(_)) = (facts.method, facts.path) else {
            return false; // an http clause never matches a connection
        };
        if !http.method_matches(method) {
            return false;
        }
        if http.paths.is_empty() {
            return true;
        }
        let directory = path.names_directory();
        path.get().is_some_and(|p| http.path_matches(p, directory))
    }
}

impl<'p> EgressDecision<'p> {
    fn with(mut self, service: Option<&'p Service>, endpoints: usize) -> Self {
        self.service = service;
        self.endpoints = endpoints;
        self
    }

    /// Where the decision came from: a rule id, `tier/<name>`, or `profile`.
    pub fn decided_by(&self) -> String {
        match (self.rule, self.tier) {
            (Some(rule), _) => rule.id.clone(),
            (None, Some(tier)) => format!("tier/{tier}"),
            (None, None) => "profile".to_string(),
        }
    }
}

fn service_target(service: &Service, port: u16) -> Resolved<'_> {
    match service.port(port) {
        Some(p) if !p.endpoints.is_empty() => Resolved::Service { service, port: p },
        // No endpoint (yet) or no such port: where it would go is not known
        // here (Envoy's own endpoint list may already be newer).
        _ => Resolved::Address { ip: None, port: Some(port) },
    }
}

/// `DENY default/bookinfo/reviews/egress[1]: Deny rule matched; to 10.0.0.7:9080 (bookinfo/details), Service bookinfo/details (2 endpoints walked)`
impl std::fmt::Display for EgressDecision<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: ", self.verdict, self.decided_by())?;
        match self.reason {
            Reason::AllowRule => f.write_str("Allow rule matched")?,
            Reason::DenyRule => f.write_str("Deny rule matched")?,
            Reason::TierDefaultDeny => {
                write!(f, "no egress rule matched and tier {} denies by default", self.tier.unwrap_or("?"))?
            }
            Reason::NoPolicySelects => f.write_str("no policy selects this workload's egress (namespace profile allows)")?,
            Reason::AllTiersPassed => f.write_str("every tier passed (namespace profile allows)")?,
        }
        f.write_str("; to ")?;
        match (self.target.ip, self.target.port) {
            (Some(ip @ IpAddr::V6(_)), Some(port)) => write!(f, "[{ip}]:{port}")?,
            (Some(ip), Some(port)) => write!(f, "{ip}:{port}")?,
            (Some(ip), None) => write!(f, "{ip}")?,
            (None, Some(port)) => write!(f, "an address not known here, port {port}")?,
            (None, None) => f.write_str("an address not known here")?,
        }
        match self.target.owner {
            Some(g) => write!(f, ", a pod of {}/{}", g.namespace(), g.service_account())?,
            None if self.target.ip.is_some() => f.write_str(", which no known pod owns")?,
            None => {}
        }
        if let Some(s) = self.service {
            write!(f, "; through Service {}/{} ({} endpoint group(s) walked)", s.namespace, s.name, self.endpoints)?;
        }
        Ok(())
    }
}
