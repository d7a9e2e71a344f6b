//! The proxy-wasm contexts: a root context per plugin config (compiles it for
//! this workload) and an HTTP context per request (decides, answers 403).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use krites_policy::engine::IdentityCheck;
use krites_policy::{PolicySet, WorkloadPolicy};
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType};

use crate::adapter::{self, ConnectionCache, Host, RequestData};
use crate::connection::{self, ConnectionGuard};
use crate::host::{self, Level};
use crate::metrics::{FilterDenial, Metrics};

/// Istio's RBAC denial, so operators see a familiar shape; no policy names leak.
const DENY_BODY: &[u8] = b"RBAC: access denied";

/// What this plugin instance enforces.
pub(crate) enum Enforcement {
    Policy(Box<WorkloadPolicy>),
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
}

impl Root {
    pub fn new(id: u32) -> Root {
        // Until a config arrives, deny: never enforce nothing.
        Root {
            id,
            state: Rc::new(Shared { enforcement: Enforcement::FailClosed(FilterDenial::NoConfig), connections: RefCell::default(), metrics: Metrics::default(), revision: String::new() }),
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
                self.enforce(Shared { enforcement: Enforcement::FailClosed(FilterDenial::NoConfig), connections: RefCell::default(), metrics, revision: String::new() });
                return true;
            }
        };
        let set = match PolicySet::from_json_owned(bytes) {
            Ok(set) => Arc::new(set),
            Err(errors) => {
                // Rejecting the update keeps the previous config enforcing.
                host::log(Level::Error, &format!("krites: config rejected, keeping the last good config: {errors}"));
                Metrics::bump(metrics.config_errors);
                return false;
            }
        };
        let workload = match adapter::workload_from_node(&EnvoyHost) {
            Ok(w) => w,
            Err(e) => {
                host::log(Level::Error, &format!("krites: {e}; denying every request (fail closed)"));
                Metrics::bump(metrics.config_errors);
                self.enforce(Shared { enforcement: Enforcement::FailClosed(FilterDenial::NoWorkloadIdentity), connections: RefCell::default(), metrics, revision: set.revision().to_string() });
                return true;
            }
        };
        if !set.in_scope(&workload.namespace) {
            host::log(
                Level::Info,
                &format!("krites: config {} is for other namespaces; {} is decided by its own namespace's config", set.revision(), workload.namespace),
            );
            Metrics::bump(metrics.config_loads);
            self.enforce(Shared { enforcement: Enforcement::OutOfScope, connections: RefCell::default(), metrics, revision: set.revision().to_string() });
            return true;
        }
        let policy = WorkloadPolicy::new(set.clone(), &workload);
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
        host::log(
            Level::Info,
            &format!(
                "krites: config {revision}{} enforcing for {}/{}: {} of {} policies select this workload, {} rules apply, {} endpoint addresses known; compiled in {} us",
                set.producer_revision().map(|r| format!(" ({r})")).unwrap_or_default(),
                workload.namespace,
                workload.service_account,
                policy.policies_selecting(),
                set.policies().len(),
                policy.rule_count(),
                set.universe().ip_count(),
                micros
            ),
        );
        self.enforce(Shared { enforcement: Enforcement::Policy(Box::new(policy)), connections: RefCell::default(), metrics, revision });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { state: self.state.clone() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let metrics = self.network.clone().unwrap_or_default();
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
        Metrics::bump(m.requests);
        let policy = match &shared.enforcement {
            Enforcement::Policy(p) => p,
            Enforcement::OutOfScope => {
                Metrics::bump(m.out_of_scope);
                return Action::Continue;
            }
            Enforcement::FailClosed(why) => {
                Metrics::bump(m.denied);
                Metrics::bump(m.filter_denial(*why));
                host::log_with(Level::Info, || {
                    let mut data = RequestData::gather(&EnvoyHost, Default::default());
                    data.read_http(&EnvoyHost);
                    format!("krites: DENY {}: fail closed; {}", why.code(), describe(&data))
                });
                return deny(why.code());
            }
        };
        let mut data = match shared.connections.try_borrow_mut() {
            Ok(mut cache) => RequestData::gather_cached(&EnvoyHost, policy.needs(), &mut cache),
            Err(_) => RequestData::gather(&EnvoyHost, policy.needs()),
        };
        if data.unverified_source.is_some() {
            Metrics::bump(m.source_unverified);
        }
        let facts = data.facts();
        let decision = policy.decide_logging(&facts, &mut |rule| {
            Metrics::bump(m.log_rule_matches);
            host::log_with(Level::Info, || format!("krites: LOG {} matched", rule.id));
        });
        match decision.identity {
            IdentityCheck::Mismatch { .. } => Metrics::bump(m.identity_mismatch),
            IdentityCheck::NoSpiffeId { .. } => Metrics::bump(m.identity_no_spiffe_id),
            IdentityCheck::UnknownAddress { .. } => Metrics::bump(m.identity_unknown_address),
            _ => {}
        }
        Metrics::bump(m.reason(decision.reason));
        if decision.allowed() {
            Metrics::bump(m.allowed);
            host::log_with(Level::Debug, || format!("krites: {decision}"));
            return Action::Continue;
        }
        Metrics::bump(m.denied);
        let code = decision.reason.code();
        // A certificate presented from the wrong address is a stolen-credential signal.
        let level = if decision.identity.is_conflict() { Level::Warn } else { Level::Info };
        // Only when the line is wanted: formatting a denial costs more than deciding it.
        if host::log_enabled(level) {
            let text = decision.to_string();
            data.read_http(&EnvoyHost);
            host::log(level, &format!("krites: {text}; {}; revision {}", describe(&data), shared.revision));
        }
        deny(code)
    }
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
