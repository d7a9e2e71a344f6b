//! The proxy-wasm contexts: a root context per plugin config (compiles it for
//! this workload) and an HTTP context per request (decides, answers 403).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use krites_policy::engine::{IdentityCheck, StagedWorkload};
use krites_policy::{EgressPolicy, Needs, PolicySet, WorkloadPolicy};
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType};

use crate::adapter::{self, ConnectionCache, Host, ListenerDirection, RequestData};
use crate::connection::{self, ConnectionGuard};
use crate::host::{self, Level};
use crate::metrics::{self, FilterDenial, Metrics};
use crate::policy_stats::{Decided, DecisionCounters};
use crate::staged::{self, Admission, LogBudget, StagedCounters};

/// Istio's RBAC denial, so operators see a familiar shape; no policy names leak.
const DENY_BODY: &[u8] = b"RBAC: access denied";

/// The workload's two sides, compiled from one policy set: its ingress
/// (inbound listeners) and its egress (outbound listeners).
pub(crate) struct Policies {
    pub(crate) ingress: WorkloadPolicy,
    pub(crate) egress: EgressPolicy,
    /// The staged view, when a staged change touches this workload; `None`
    /// costs the request path one check.
    pub(crate) staged: Option<Staged>,
}

impl Policies {
    /// What the roles of a listener in `direction` read (both views: the
    /// request is gathered once).
    pub(crate) fn needs(&self, direction: ListenerDirection) -> Needs {
        let (mut ingress, mut egress_http) = (self.ingress.needs(), self.egress.reads_http());
        if let Some(staged) = &self.staged {
            ingress = staged::union(ingress, staged.view.ingress.needs());
            egress_http |= staged.view.egress.reads_http();
        }
        let egress = Needs { http: egress_http, ..adapter::EGRESS_NEEDS };
        adapter::needs_for(direction.roles(), ingress, egress)
    }
}

thread_local! {
    /// The staged lines this VM may still log this second (shared by every
    /// root and both roles: the limit is the VM's).
    static STAGED_LOG_BUDGET: LogBudget = const { LogBudget::new(staged::LOG_LINES_PER_SECOND) };
}

/// A workload's staged view and its counters.
pub(crate) struct Staged {
    pub(crate) view: StagedWorkload,
    counters: StagedCounters<u32>,
}

impl Staged {
    /// Counts a difference between the enforced and the staged verdict, and
    /// returns the head of its log line when the line is wanted and within
    /// the VM's budget. `what` names the decision, `staged_text` formats the
    /// staged decision (only when logged). Never changes the verdict.
    pub(crate) fn record(
        &self,
        what: &str,
        enforced: staged::Decided<'_>,
        would: staged::Decided<'_>,
        staged_text: impl FnOnce() -> String,
    ) -> Option<String> {
        let difference = self.view.compare(enforced, would)?;
        let (total, per_policy) = self.counters.counters(&self.view, &difference);
        Metrics::bump(total);
        if let Some(id) = per_policy {
            Metrics::bump(id);
        }
        if !host::log_enabled(Level::Info) {
            return None;
        }
        let admission = STAGED_LOG_BUDGET.with(|budget| budget.admit(host::now_nanos()));
        match admission {
            Admission::Log { suppressed } => Some(staged::describe_difference(what, enforced.0, &difference, &staged_text(), suppressed)),
            Admission::Suppressed => {
                Metrics::bump(self.counters.log_suppressed);
                None
            }
        }
    }
}

/// What this plugin instance enforces.
pub(crate) enum Enforcement {
    Policy(Box<Policies>),
    /// The config names other namespaces (a shard Istio's root namespace
    /// spreads mesh-wide): this workload's own shard decides; let it through.
    OutOfScope,
    /// Deny everything, and say why in logs and stats.
    FailClosed(FilterDenial),
}

pub(crate) struct EnvoyHost;

impl Host for EnvoyHost {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        host::property(path).ok().flatten()
    }
    fn request_headers(&self) -> Option<Vec<u8>> {
        host::request_headers().ok().flatten()
    }
}

pub struct Root {
    /// The root context id: the key under which the HTTP role publishes
    /// what it enforces to the NETWORK role (see `connection`).
    id: u32,
    state: Rc<Shared>,
    /// NETWORK role: decide connections no HTTP filter sees, and record each
    /// connection's peer for the HTTP role. Its counters.
    network: Option<Rc<Metrics>>,
}

pub(crate) struct Shared {
    pub(crate) enforcement: Enforcement,
    /// Peer facts of recent connections; this VM's thread only.
    connections: RefCell<ConnectionCache>,
    metrics: Metrics,
    pub(crate) revision: String,
    /// Which policy decided: per-policy and per-tier-default counters of
    /// HTTP requests and of TCP-chain connections (the NETWORK role bumps
    /// these: the ids belong to this VM, whichever root defined them).
    request_counters: DecisionCounters<u32>,
    pub(crate) connection_counters: DecisionCounters<u32>,
    /// The same, for the egress role's decisions.
    egress_request_counters: DecisionCounters<u32>,
    pub(crate) egress_connection_counters: DecisionCounters<u32>,
}

impl Shared {
    /// State with no per-policy counters (nothing is enforced by policy).
    fn without_policy(enforcement: Enforcement, metrics: Metrics, revision: String) -> Shared {
        Shared {
            enforcement,
            connections: RefCell::default(),
            metrics,
            revision,
            request_counters: DecisionCounters::default(),
            connection_counters: DecisionCounters::default(),
            egress_request_counters: DecisionCounters::default(),
            egress_connection_counters: DecisionCounters::default(),
        }
    }
}

impl Root {
    pub fn new(id: u32) -> Root {
        // Until a config arrives, deny: never enforce nothing.
        Root {
            id,
            state: Rc::new(Shared::without_policy(Enforcement::FailClosed(FilterDenial::NoConfig), Metrics::undefined(), String::new())),
            network: None,
        }
    }

    /// Enforce `state` from now on, in HTTP streams and (published) in the
    /// NETWORK role's connections.
    fn enforce(&mut self, state: Shared) {
        self.state = Rc::new(state);
        connection::publish(self.id, self.state.clone());
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        connection::unpublish(self.id);
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let root_id = host::property(&["plugin_root_id"]).ok().flatten();
        if root_id.as_deref() == Some(adapter::PEER_ADDRESS_ROOT_ID.as_bytes()) {
            self.network = Some(Rc::new(Metrics::define()));
            host::log(Level::Info, "krites: NETWORK role: deciding connections on filter chains without an HTTP filter, recording peer addresses for the HTTP filter");
            return true;
        }
        let metrics = Metrics::define();
        let started = host::now_nanos();
        // Checked before the config is copied into the VM.
        if let Err(e) = adapter::check_config_size(size) {
            host::log(Level::Error, &format!("krites: config rejected, keeping the last good config: {e}"));
            Metrics::bump(metrics.config_errors);
            return false;
        }
        let bytes = match host::plugin_configuration(size) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                host::log(Level::Error, "krites: no plugin configuration; denying every request (fail closed)");
                Metrics::bump(metrics.config_errors);
                self.enforce(Shared::without_policy(Enforcement::FailClosed(FilterDenial::NoConfig), metrics, String::new()));
                return true;
            }
        };
        // Read first: the config is compiled for this workload (every policy
        // validated, only those selecting it kept). Without one, it is still
        // validated whole, so a bad config is refused either way.
        let workload = adapter::workload_from_node(&EnvoyHost);
        let compiled = match &workload {
            Ok(w) => PolicySet::for_workload(bytes, w),
            Err(_) => PolicySet::from_json_owned(bytes),
        };
        let set = match compiled {
            Ok(set) => Arc::new(set),
            Err(errors) => {
                // Rejecting the update keeps the previous config enforcing.
                host::log(Level::Error, &format!("krites: config rejected, keeping the last good config: {errors}"));
                Metrics::bump(metrics.config_errors);
                metrics.record_memory();
                return false;
            }
        };
        let workload = match workload {
            Ok(w) => w,
            Err(e) => {
                host::log(Level::Error, &format!("krites: {e}; denying every request (fail closed)"));
                Metrics::bump(metrics.config_errors);
                self.enforce(Shared::without_policy(Enforcement::FailClosed(FilterDenial::NoWorkloadIdentity), metrics, set.revision().to_string()));
                return true;
            }
        };
        if !set.in_scope(&workload.namespace) {
            host::log(
                Level::Info,
                &format!("krites: config {} is for other namespaces; {} is decided by its own namespace's config", set.revision(), workload.namespace),
            );
            Metrics::bump(metrics.config_loads);
            metrics.record_memory();
            self.enforce(Shared::without_policy(Enforcement::OutOfScope, metrics, set.revision().to_string()));
            return true;
        }
        let policy = WorkloadPolicy::new(set.clone(), &workload);
        // One policy set, both sides: the egress role reads the same Arc.
        let egress = EgressPolicy::new(set.clone(), &workload);
        // Defined here, once per config: the request path only looks them up.
        let (request_counters, mut collisions) = DecisionCounters::define(&policy, Decided::Request, metrics::counter);
        let (connection_counters, _) = DecisionCounters::define(&policy, Decided::Connection, metrics::counter);
        let (egress_request_counters, egress_collisions) =
            DecisionCounters::define_egress(&egress, Decided::EgressRequest, metrics::counter);
        let (egress_connection_counters, _) = DecisionCounters::define_egress(&egress, Decided::EgressConnection, metrics::counter);
        let new: Vec<_> = egress_collisions.into_iter().filter(|c| !collisions.contains(c)).collect();
        collisions.extend(new);
        for c in &collisions {
            host::log(
                Level::Warn,
                &format!(
                    "krites: policies {} and {} have the same stats labels (tier {}, policy {}): their decisions are counted together",
                    c.ids.0, c.ids.1, c.tier, c.policy
                ),
            );
        }
        // The staged view, built once; `None` when nothing staged touches this workload.
        let staged = StagedWorkload::new(&set, &workload).map(|view| {
            let counters = StagedCounters::define(&view, metrics::counter);
            Staged { view, counters }
        });
        if let Some(s) = &staged {
            let changes: Vec<String> = s.view.changes().map(|c| format!("{:?} {}", c.action, c.id)).collect();
            host::log(
                Level::Info,
                &format!(
                    "krites: staged policies touch {}/{}: {}; each decision is also made under them, differences are counted and logged (the enforced verdict stands)",
                    workload.namespace,
                    workload.service_account,
                    changes.join(", ")
                ),
            );
        }
        let micros = match (started, host::now_nanos()) {
            (Some(a), Some(b)) => b.saturating_sub(a) / 1000,
            _ => 0,
        };
        let revision = set.revision().to_string();
        Metrics::bump(metrics.config_loads);
        Metrics::set(metrics.config_revision, u64::from_str_radix(revision.get(..8).unwrap_or("0"), 16).unwrap_or(0));
        Metrics::set(metrics.config_policies, policy.policies_selecting() as u64);
        Metrics::set(metrics.config_rules, policy.rule_count() as u64);
        Metrics::set(metrics.config_endpoints, set.universe().ip_count() as u64);
        Metrics::set(metrics.config_compile_micros, micros);
        metrics.record_memory();
        host::log(
            Level::Info,
            &format!(
                "krites: config {revision}{} enforcing for {}/{}: {} of {} policies select this workload, {} rules apply, {} endpoint addresses known; egress: {} policies select it, {} rules apply, {} Services known; compiled in {} us",
                set.producer_revision().map(|r| format!(" ({r})")).unwrap_or_default(),
                workload.namespace,
                workload.service_account,
                policy.policies_selecting(),
                set.policies_in_config(),
                policy.rule_count(),
                set.universe().ip_count(),
                egress.policies_selecting(),
                egress.rule_count(),
                set.services().len(),
                micros
            ),
        );
        self.enforce(Shared {
            enforcement: Enforcement::Policy(Box::new(Policies { ingress: policy, egress, staged })),
            connections: RefCell::default(),
            metrics,
            revision,
            request_counters,
            connection_counters,
            egress_request_counters,
            egress_connection_counters,
        });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { state: self.state.clone() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        // Envoy asks only a NETWORK root (after its on_configure) for stream
        // contexts; anything else still decides, it just counts nothing.
        let metrics = self.network.clone().unwrap_or_else(|| Rc::new(Metrics::undefined()));
        Some(Box::new(ConnectionGuard::new(metrics)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.network.is_some() { ContextType::StreamContext } else { ContextType::HttpContext })
    }
}

struct Request {
    state: Rc<Shared>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = &*self.state;
        let m = &shared.metrics;
        let policies = match &shared.enforcement {
            Enforcement::Policy(p) => p,
            Enforcement::OutOfScope => {
                // Counted as before, whichever the listener's direction: the direction would
                // cost a host call on every request of every pod outside the shard.
                Metrics::bump(m.requests);
                Metrics::bump(m.out_of_scope);
                return Action::Continue;
            }
            Enforcement::FailClosed(why) => {
                let direction = ListenerDirection::read(&EnvoyHost);
                let roles = direction.roles();
                if roles.ingress {
                    Metrics::bump(m.requests);
                    Metrics::bump(m.denied);
                    Metrics::bump(m.filter_denial(*why));
                }
                if roles.egress {
                    Metrics::bump(m.egress.requests);
                    Metrics::bump(m.egress.denied);
                    Metrics::bump(m.egress.fail_closed);
                }
                host::log_with(Level::Info, || {
                    let mut data = RequestData::gather(&EnvoyHost, adapter::EGRESS_NEEDS);
                    data.read_http(&EnvoyHost);
                    format!("krites: DENY {}: fail closed; {}; {}", why.code(), direction_name(direction), describe(&data))
                });
                return deny(why.code());
            }
        };
        let needs_of = |direction: ListenerDirection| policies.needs(direction);
        let (mut data, direction) = match shared.connections.try_borrow_mut() {
            Ok(mut cache) => RequestData::gather_cached_directed(&EnvoyHost, needs_of, &mut cache),
            Err(_) => RequestData::gather_directed(&EnvoyHost, needs_of),
        };
        let roles = direction.roles();
        let staged = policies.staged.as_ref();
        if roles.ingress {
            if let Err(code) = decide_ingress(shared, &policies.ingress, staged, &mut data) {
                return deny(code);
            }
        }
        if roles.egress {
            if let Err(code) = decide_egress(shared, &policies.egress, staged, &mut data, direction) {
                return deny(code);
            }
        }
        Action::Continue
    }
}

/// The ingress role: a request to the workload, on an inbound listener.
/// With a staged view, the request is decided under it too (never changing
/// the verdict) and a difference is counted and logged.
fn decide_ingress(shared: &Shared, policy: &WorkloadPolicy, staged: Option<&Staged>, data: &mut RequestData) -> Result<(), &'static str> {
    let m = &shared.metrics;
    Metrics::bump(m.requests);
    if data.unverified_source.is_some() {
        Metrics::bump(m.source_unverified);
    }
    let facts = data.facts();
    let decision = policy.decide_logging(&facts, &mut |rule| {
        Metrics::bump(m.log_rule_matches);
        host::log_with(Level::Info, || format!("krites: LOG {} matched", rule.id));
    });
    let staged_line = staged.and_then(|s| {
        let would = s.view.ingress.decide(&facts);
        s.record("request", (decision.verdict, decision.policy), (would.verdict, would.policy), || would.to_string())
    });
    match decision.identity {
        IdentityCheck::Mismatch { .. } => Metrics::bump(m.identity_mismatch),
        IdentityCheck::NoSpiffeId { .. } => Metrics::bump(m.identity_no_spiffe_id),
        IdentityCheck::UnknownAddress { .. } => Metrics::bump(m.identity_unknown_address),
        _ => {}
    }
    Metrics::bump(m.reason(decision.reason));
    if let Some(id) = shared.request_counters.counter(&decision) {
        Metrics::bump(id);
    }
    if decision.allowed() {
        Metrics::bump(m.allowed);
        host::log_with(Level::Debug, || format!("krites: {decision}"));
        log_staged(staged_line, data, shared, describe);
        return Ok(());
    }
    Metrics::bump(m.denied);
    let code = decision.reason.code();
    // A certificate presented from the wrong address is a stolen-credential signal.
    let level = if decision.identity.is_conflict() { Level::Warn } else { Level::Info };
    // Only when the line is wanted: formatting a denial costs more than deciding it.
    if host::log_enabled(level) {
        let text = decision.to_string();
        data.read_http(&EnvoyHost);
        host::log(level, &format!("krites: {text}; {}; revision {}", describe(data), shared.revision));
    }
    log_staged(staged_line, data, shared, describe);
    Err(code)
}

/// The egress role: a request the workload sends, on an outbound listener.
/// The destination is the cluster the route picked (the connection manager
/// resolves the route before any filter runs, and Envoy sets the stream's
/// upstream cluster then, so `xds.cluster_name` names it at request headers)
/// with the original destination: a `Host` header naming another Service
/// routes, and is judged, to that Service.
fn decide_egress(
    shared: &Shared,
    policy: &EgressPolicy,
    staged: Option<&Staged>,
    data: &mut RequestData,
    direction: ListenerDirection,
) -> Result<(), &'static str> {
    let m = &shared.metrics.egress;
    Metrics::bump(m.requests);
    let cluster = host::property(&["xds", "cluster_name"]).ok().flatten().and_then(|c| String::from_utf8(c).ok());
    let facts = data.egress_facts(cluster.as_deref());
    let decision = policy.decide_logging(&facts, &mut |rule| {
        Metrics::bump(shared.metrics.log_rule_matches);
        host::log_with(Level::Info, || format!("krites: LOG {} matched (egress)", rule.id));
    });
    let staged_line = staged.and_then(|s| {
        let would = s.view.egress.decide(&facts);
        s.record("egress request", (decision.verdict, decision.policy), (would.verdict, would.policy), || would.to_string())
    });
    let describe_this = |data: &RequestData| describe_egress(data, cluster.as_deref());
    Metrics::bump(m.reason(decision.reason));
    if let Some(id) = shared.egress_request_counters.egress_counter(&decision) {
        Metrics::bump(id);
    }
    if decision.allowed() {
        Metrics::bump(m.allowed);
        host::log_with(Level::Debug, || format!("krites: egress {decision}; {}", describe_egress(data, cluster.as_deref())));
        log_staged(staged_line, data, shared, describe_this);
        return Ok(());
    }
    Metrics::bump(m.denied);
    if host::log_enabled(Level::Info) {
        let text = decision.to_string();
        data.read_http(&EnvoyHost);
        host::log(
            Level::Info,
            &format!("krites: egress {text}; {}{}; revision {}", describe_egress(data, cluster.as_deref()), unspecified_note(direction), shared.revision),
        );
    }
    let code = decision.reason.code();
    log_staged(staged_line, data, shared, describe_this);
    Err(code)
}

/// Logs a staged difference's line (see [`Staged::record`]) with the request.
fn log_staged(line: Option<String>, data: &mut RequestData, shared: &Shared, describe: impl Fn(&RequestData) -> String) {
    if let Some(line) = line {
        data.read_http(&EnvoyHost);
        host::log(Level::Info, &format!("{line}; {}; revision {}", describe(data), shared.revision));
    }
}

/// Said on a decision made on a listener without a direction (both roles ran).
fn unspecified_note(direction: ListenerDirection) -> &'static str {
    if direction == ListenerDirection::Unspecified {
        "; listener has no traffic direction, so both ingress and egress rules apply"
    } else {
        ""
    }
}

fn direction_name(direction: ListenerDirection) -> &'static str {
    match direction {
        ListenerDirection::Inbound => "inbound",
        ListenerDirection::Outbound => "outbound (egress)",
        ListenerDirection::Unspecified => "listener without a traffic direction",
    }
}

/// An outgoing request for logs (the path is the app's: escaped).
fn describe_egress(data: &RequestData, cluster: Option<&str>) -> String {
    let address = |ip: Option<std::net::IpAddr>, port: Option<u16>| match (ip, port) {
        (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
        (Some(ip), None) => ip.to_string(),
        _ => "?".into(),
    };
    format!(
        "request {} {:?} from {} to {} via cluster {:?}",
        data.method.as_deref().unwrap_or("-"),
        data.path.as_deref().unwrap_or("-"),
        address(data.source_ip, data.source_port),
        address(data.destination_ip, data.destination_port),
        cluster.unwrap_or("-")
    )
}

/// Request details for logs; the path is attacker-controlled, so escape it.
fn describe(data: &RequestData) -> String {
    let source = match (data.source_ip, data.unverified_source) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(claimed)) => format!("unverified {claimed} (from x-forwarded-for)"),
        (None, None) => "?".into(),
    };
    format!(
        "request {} {:?} from {} principal {:?}",
        data.method.as_deref().unwrap_or("-"),
        data.path.as_deref().unwrap_or("-"),
        source,
        data.uri_san.as_deref().unwrap_or(if data.mtls { "(no URI SAN)" } else { "(plaintext)" })
    )
}

fn deny(code: &str) -> Action {
    let details = format!("krites_access_denied:{code}");
    if host::send_local_response(403, &details, &[("content-type", "text/plain")], DENY_BODY).is_err() {
        host::log(Level::Error, "krites: could not send the 403 reply");
    }
    Action::Pause
}
