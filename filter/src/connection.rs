//! The NETWORK role: every inbound connection that no HTTP filter will see
//! is decided here, once, with the same engine and the same two-factor rule.
//!
//! In an Istio sidecar the inbound listener picks a filter chain by port,
//! transport and ALPN. HTTP chains end in the HTTP connection manager, where
//! the HTTP role decides each request. TCP chains end in `tcp_proxy`, straight
//! to the application: TLS with ALPN `istio` on a port whose protocol is
//! auto-detected, unsniffed plaintext in PERMISSIVE mode, ports declared TCP.
//! Istio gives a `type: NETWORK` WasmPlugin to both kinds, under the same
//! chain name, so the role tells them apart by what the chain has done by
//! the connection's first data: `tcp_proxy` picks its upstream cluster when
//! the connection opens (after this filter's `on_new_connection`, which is
//! why the decision waits for data), the connection manager never does.
//! Verified in Envoy 1.40 (`tests/tests/tcp_chains.rs`).
//!
//! On a TLS chain the client certificate is known only once the handshake is
//! done, which is after `on_new_connection` and before the first decrypted
//! byte. A server that speaks first (SMTP, MySQL) may send its greeting
//! before the client's handshake ends: it passes, as with Envoy's own network
//! RBAC filter, and the connection is decided at the client's first byte. No
//! client byte reaches the application before the decision.
//!
//! The role compiles no config of its own. Istio loads both plugins from one
//! module with no `vm_id`, so Envoy runs them in one VM per worker thread;
//! each HTTP-role root context publishes what it enforces in this VM, and
//! connections are judged by all of it. Nothing published means no config
//! was loaded: deny.
//!
//! The same plugin runs on the sidecar's outbound listeners too (a
//! WasmPlugin with no mode in its `match`): there the connection is one the
//! workload opens, and it is the workload's egress rules that decide it
//! (`adapter::ListenerDirection`). On an outbound TCP chain (`tcp_proxy` to
//! a Service's cluster, or to `PassthroughCluster` for an address the mesh
//! does not know) the decision waits for the first data as inbound does, by
//! when `tcp_proxy` has picked its cluster: the destination is that cluster
//! with the original destination. Outbound HTTP chains are the HTTP role's.
//! An egress rule with `http` (an Allow rule: `http` is valid on no other)
//! never matches a connection, so the connection's own walk decides it
//! exactly; one that only such a rule could allow is closed, as inbound.

use std::cell::RefCell;
use std::rc::Rc;

use krites_policy::engine::EgressConnectionVerdict;
use krites_policy::{ConnectionVerdict, Needs, Reason, Verdict};
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;

use crate::adapter::{self, ListenerDirection, RequestData};
use crate::host::{self, Level};
use crate::metrics::{FilterDenial, Metrics};
use crate::plugin::{EnvoyHost, Enforcement, Policies, Shared};

thread_local! {
    /// What each HTTP-role root context of this VM enforces, by context id.
    static PUBLISHED: RefCell<Vec<(u32, Rc<Shared>)>> = const { RefCell::new(Vec::new()) };
}

/// An HTTP-role root context loaded `state`: connections are judged by it
/// from now on (replacing what the same context published before).
pub fn publish(root_id: u32, state: Rc<Shared>) {
    PUBLISHED.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.retain(|(id, _)| *id != root_id);
            p.push((root_id, state));
        }
    });
}

/// The root context is gone (its plugin was removed or replaced).
pub fn unpublish(root_id: u32) {
    PUBLISHED.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.retain(|(id, _)| *id != root_id);
        }
    });
}

/// A connection's facts: everything a rule without `http` can test.
const CONNECTION_NEEDS: Needs = Needs { source_port: true, destination_ip: true, destination_port: true, http: false };

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Allow,
    /// Only an HTTP request could be allowed; this chain has no HTTP filter.
    HttpOnly,
    Deny,
}

struct Judgement {
    kind: Kind,
    /// Why the engine decided so (`None`: failed closed or out of scope).
    reason: Option<Reason>,
    /// The deciding policy's (or tier default's) connection counter.
    counter: Option<u32>,
    /// The log line, built only when the level wants it.
    line: Option<(Level, String)>,
}

/// What a connection's log line adds when only an HTTP request on it could be allowed.
const ONLY_HTTP: &str = "; only an HTTP request could be allowed, and this filter chain has no HTTP filter (declare the port HTTP)";

/// The strictest judgement over every config published in this VM: an
/// out-of-scope config lets the connection through, a failed one fails
/// closed (`failed`: what its log line adds), and each other one is judged
/// by `judge`.
fn strictest(data: &RequestData, failed: &str, judge: impl Fn(&Shared, &Policies) -> Judgement) -> Judgement {
    PUBLISHED.with(|p| {
        let Ok(p) = p.try_borrow() else {
            return fail_closed(FilterDenial::NoConfig, data, "");
        };
        if p.is_empty() {
            return fail_closed(FilterDenial::NoConfig, data, "; no HTTP-role config is loaded in this VM");
        }
        let mut strictest = Judgement { kind: Kind::Allow, reason: None, counter: None, line: None };
        for (_, shared) in p.iter() {
            let judged = match &shared.enforcement {
                Enforcement::OutOfScope => Judgement { kind: Kind::Allow, reason: None, counter: None, line: None },
                Enforcement::FailClosed(why) => fail_closed(*why, data, failed),
                Enforcement::Policy(policies) => judge(shared, policies),
            };
            if judged.kind > strictest.kind || (judged.kind == strictest.kind && strictest.line.is_none()) {
                strictest = judged;
            }
        }
        strictest
    })
}

/// The connection's verdict under every config published in this VM: the
/// strictest one wins (a failed shard fails closed, as its HTTP filter does).
fn judge(data: &RequestData) -> Judgement {
    strictest(data, "", |shared, policy| {
        let facts = data.facts();
        let verdict = policy.ingress.decide_connection(&facts);
        let kind = match verdict {
            ConnectionVerdict::Allow(_) => Kind::Allow,
            ConnectionVerdict::HttpDecides(_) => Kind::HttpOnly,
            ConnectionVerdict::Deny(_) => Kind::Deny,
        };
        let decision = verdict.decision();
        if let Some(staged) = &policy.staged {
            // A TCP chain allows only what a connection may carry: as enforced.
            let would = staged.view.ingress.decide_connection(&facts);
            let would_verdict = if matches!(would, ConnectionVerdict::Allow(_)) { Verdict::Allow } else { Verdict::Deny };
            let line = staged.record(
                "connection",
                (if kind == Kind::Allow { Verdict::Allow } else { Verdict::Deny }, decision.policy),
                (would_verdict, would.decision().policy),
                || would.decision().to_string(),
            );
            if let Some(line) = line {
                host::log(Level::Info, &format!("{line}; {}; revision {}", describe(data), shared.revision));
            }
        }
        let level = match kind {
            Kind::Allow => Level::Debug,
            _ if decision.identity.is_conflict() => Level::Warn,
            _ => Level::Info,
        };
        let line = host::log_enabled(level).then(|| {
            let only_http = if kind == Kind::HttpOnly { ONLY_HTTP } else { "" };
            (level, format!("krites: {decision}{only_http}; {}; revision {}", describe(data), shared.revision))
        });
        Judgement { kind, reason: Some(decision.reason), counter: shared.connection_counters.counter(decision), line }
    })
}

fn fail_closed(why: FilterDenial, data: &RequestData, detail: &str) -> Judgement {
    let line = host::log_enabled(Level::Info)
        .then(|| (Level::Info, format!("krites: DENY {}: fail closed{detail}; {}", why.code(), describe(data))));
    Judgement { kind: Kind::Deny, reason: None, counter: None, line }
}

/// The egress verdict of a connection the workload opens, under every config
/// published in this VM (the strictest wins, as for ingress).
fn judge_egress(data: &RequestData, cluster: &str) -> Judgement {
    strictest(data, " (egress)", |shared, policies| {
        let egress = &policies.egress;
        let facts = data.egress_facts(Some(cluster));
        // Rules with `http` never match a connection (they are
        // Allow rules only): the connection's own walk is exact.
        let verdict = egress.decide_connection(&facts);
        let kind = match verdict {
            EgressConnectionVerdict::Allow(_) => Kind::Allow,
            EgressConnectionVerdict::HttpDecides(_) => Kind::HttpOnly,
            EgressConnectionVerdict::Deny(_) => Kind::Deny,
        };
        let decision = *verdict.decision();
        if let Some(staged) = &policies.staged {
            let would = *staged.view.egress.decide_connection(&facts).decision();
            let would_verdict = would.verdict;
            let line = staged.record(
                "egress connection",
                (if kind == Kind::Allow { Verdict::Allow } else { Verdict::Deny }, decision.policy),
                (would_verdict, would.policy),
                || would.to_string(),
            );
            if let Some(line) = line {
                host::log(Level::Info, &format!("{line}; {}; revision {}", describe_egress(data, cluster), shared.revision));
            }
        }
        let level = if kind == Kind::Allow { Level::Debug } else { Level::Info };
        let line = host::log_enabled(level).then(|| {
            let only_http = if kind == Kind::HttpOnly { ONLY_HTTP } else { "" };
            (
                level,
                format!("krites: egress {decision}{only_http}; {}; revision {}", describe_egress(data, cluster), shared.revision),
            )
        });
        Judgement { kind, reason: Some(decision.reason), counter: shared.egress_connection_counters.egress_counter(&decision), line }
    })
}

fn describe_egress(data: &RequestData, cluster: &str) -> String {
    let address = |ip: Option<std::net::IpAddr>, port: Option<u16>| match (ip, port) {
        (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
        (Some(ip), None) => ip.to_string(),
        _ => "?".into(),
    };
    format!(
        "TCP connection from {} to {} via cluster {cluster:?}",
        address(data.source_ip, data.source_port),
        address(data.destination_ip, data.destination_port)
    )
}

fn describe(data: &RequestData) -> String {
    let source = data.source_ip.map_or_else(|| "?".to_string(), |ip| ip.to_string());
    let port = data.destination_port.map_or_else(|| "?".to_string(), |p| p.to_string());
    let peer = match (&data.uri_san, data.mtls) {
        (Some(san), _) => format!("principal {san:?}"),
        (None, true) => "mTLS without a URI SAN".to_string(),
        (None, false) => "plaintext".to_string(),
    };
    format!("TCP connection from {source} to port {port}, {peer}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing has crossed the connection yet.
    Undecided,
    /// A TCP chain allowed it: bytes flow.
    Allowed,
    /// An HTTP chain: the HTTP role decides each request.
    Http,
    Closed,
}

/// One connection of the NETWORK role.
pub struct ConnectionGuard {
    state: State,
    /// Its listener's direction (read once, at `on_new_connection`): ingress or egress.
    direction: ListenerDirection,
    /// The TCP peer as `on_new_connection` read and recorded it, so that the
    /// decision need not read it back (each host call that returns data costs
    /// microseconds, `network_role_cost_per_connection`).
    peer: Option<Vec<u8>>,
    metrics: Rc<Metrics>,
}

/// Envoy, with the recorded peer (if it was) answered from the guard's memory.
struct RecordedPeer<'a>(Option<&'a [u8]>);

impl adapter::Host for RecordedPeer<'_> {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        match self.0 {
            Some(peer) if path == [adapter::PEER_ADDRESS_KEY] => Some(peer.to_vec()),
            _ => EnvoyHost.property(path),
        }
    }
    fn request_headers(&self) -> Option<Vec<u8>> {
        EnvoyHost.request_headers()
    }
}

impl ConnectionGuard {
    pub fn new(metrics: Rc<Metrics>) -> ConnectionGuard {
        ConnectionGuard { state: State::Undecided, direction: ListenerDirection::Unspecified, peer: None, metrics }
    }

    /// Decides at the first data in either direction.
    fn decide(&mut self) -> Action {
        // `tcp_proxy` picked its cluster when the connection opened; the
        // connection manager never sets one on the connection.
        let cluster = match host::property(&["xds", "cluster_name"]) {
            Ok(Some(c)) if !c.is_empty() => c,
            _ => {
                self.state = State::Http;
                Metrics::bump(self.metrics.connections_http);
                return Action::Continue;
            }
        };
        let data = RequestData::gather(&RecordedPeer(self.peer.as_deref()), CONNECTION_NEEDS);
        let roles = self.direction.roles();
        let mut allowed = true;
        if roles.ingress {
            let m = &self.metrics;
            Metrics::bump(m.connections);
            let judgement = judge(&data);
            Self::account(&judgement, m.connection_reason(judgement.reason.unwrap_or(Reason::DenyRule)));
            match judgement.kind {
                Kind::Allow => Metrics::bump(m.connections_allowed),
                kind => {
                    allowed = false;
                    Metrics::bump(m.connections_denied);
                    if kind == Kind::HttpOnly {
                        Metrics::bump(m.connections_denied_http_only);
                    }
                }
            }
        }
        if roles.egress {
            let m = &self.metrics.egress;
            Metrics::bump(m.connections);
            let cluster = String::from_utf8_lossy(&cluster);
            let judgement = judge_egress(&data, &cluster);
            Self::account(&judgement, m.connection_reason(judgement.reason.unwrap_or(Reason::DenyRule)));
            if judgement.reason.is_none() && judgement.kind != Kind::Allow {
                Metrics::bump(m.fail_closed);
            }
            match judgement.kind {
                Kind::Allow => Metrics::bump(m.connections_allowed),
                kind => {
                    allowed = false;
                    Metrics::bump(m.connections_denied);
                    if kind == Kind::HttpOnly {
                        Metrics::bump(m.connections_denied_http_only);
                    }
                }
            }
        }
        if allowed {
            self.state = State::Allowed;
            return Action::Continue;
        }
        self.close()
    }

    /// Logs the judgement's line, bumps its reason's counter (`reason_counter`,
    /// only when the engine decided) and its policy's.
    fn account(judgement: &Judgement, reason_counter: u32) {
        if let Some((level, line)) = &judgement.line {
            host::log(*level, line);
        }
        if judgement.reason.is_some() {
            Metrics::bump(reason_counter);
        }
        if let Some(id) = judgement.counter {
            Metrics::bump(id);
        }
    }

    fn close(&mut self) -> Action {
        self.state = State::Closed;
        if host::close_downstream().is_err() {
            host::log(Level::Error, "krites: could not close a denied connection");
        }
        Action::Pause
    }

    /// The TLS handshake is done: the client certificate, if any, is known.
    /// Asked only when the server speaks before the client, so a connection
    /// whose client speaks first never pays these host calls. A TLS
    /// connection has its TLS version from its start, before the handshake
    /// ends (Envoy reads it from the socket's SSL object).
    fn handshake_done(&self) -> bool {
        let tls = host::property(&["connection", "tls_version"]).ok().flatten().is_some_and(|v| !v.is_empty());
        !tls || host::property(&["connection", "mtls"]).ok().flatten().is_some_and(|b| b.first().is_some_and(|&v| v != 0))
    }
}

impl Context for ConnectionGuard {}

impl StreamContext for ConnectionGuard {
    /// Records the peer for the HTTP role: at connection level `source.address`
    /// is still the TCP peer (no header has been read yet); the HTTP streams of
    /// the connection read it from the connection's filter state.
    fn on_new_connection(&mut self) -> Action {
        match host::property(&["source", "address"]) {
            Ok(Some(peer)) => {
                if host::set_property(&[adapter::PEER_ADDRESS_KEY], &peer).is_err() {
                    host::log(Level::Warn, "krites: could not record the connection's peer address");
                }
                self.peer = Some(peer);
            }
            _ => host::log(Level::Warn, "krites: connection has no source address to record"),
        }
        self.direction = ListenerDirection::read(&EnvoyHost);
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        match self.state {
            State::Allowed | State::Http => Action::Continue,
            State::Closed => Action::Pause,
            State::Undecided => self.decide(),
        }
    }

    fn on_upstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        match self.state {
            State::Allowed | State::Http => Action::Continue,
            State::Closed => Action::Pause,
            // A server's greeting before the client's handshake ends: passes.
            State::Undecided if !self.handshake_done() => Action::Continue,
            State::Undecided => self.decide(),
        }
    }
}
