//! Envoy stats. Envoy stores them as `wasmcustom.<name>`, which Istio's default
//! stats inclusion (`wasm`) exports; Prometheus sees `<name>`.

use krites_policy::Reason;

use crate::host::{self, METRIC_COUNTER, METRIC_GAUGE};

/// Why a request was denied before the engine was consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterDenial {
    /// No plugin config was given: enforce nothing would be fail-open.
    NoConfig,
    /// The node metadata does not say which workload this is.
    NoWorkloadIdentity,
}

impl FilterDenial {
    pub fn code(self) -> &'static str {
        match self {
            FilterDenial::NoConfig => "no_config",
            FilterDenial::NoWorkloadIdentity => "no_workload_identity",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub requests: u32,
    pub allowed: u32,
    pub denied: u32,
    reasons: [u32; Reason::ALL.len()],
    /// NETWORK role: TCP-chain connections by reason.
    connection_reasons: [u32; Reason::ALL.len()],
    no_config: u32,
    no_workload_identity: u32,
    pub identity_mismatch: u32,
    pub identity_no_spiffe_id: u32,
    pub identity_unknown_address: u32,
    pub source_unverified: u32,
    pub log_rule_matches: u32,
    pub out_of_scope: u32,
    /// NETWORK role: connections decided, allowed, closed, and left to the
    /// HTTP role (an HTTP chain, where only a request can be allowed).
    pub connections: u32,
    pub connections_allowed: u32,
    pub connections_denied: u32,
    pub connections_http: u32,
    /// Closed because only an HTTP request could be allowed, on a chain with
    /// no HTTP filter (Istio's TCP chains): counted in `connections_denied` too.
    pub connections_denied_http_only: u32,
    pub config_loads: u32,
    pub config_errors: u32,
    pub config_revision: u32,
    pub config_policies: u32,
    pub config_rules: u32,
    pub config_endpoints: u32,
    pub config_compile_micros: u32,
    /// The VM's linear memory after its last compile (it keeps the peak).
    pub memory_linear_bytes: u32,
    /// The egress role (outbound listeners), counted apart from the inbound side.
    pub egress: EgressMetrics,
}

/// Counters of the egress role: requests the HTTP role decided on outbound
/// listeners, and connections the NETWORK role decided on outbound TCP chains.
#[derive(Debug)]
pub struct EgressMetrics {
    pub requests: u32,
    pub allowed: u32,
    pub denied: u32,
    reasons: [u32; Reason::ALL.len()],
    pub connections: u32,
    pub connections_allowed: u32,
    pub connections_denied: u32,
    /// Closed: only an HTTP request could be allowed, and this chain has no HTTP filter.
    pub connections_denied_http_only: u32,
    connection_reasons: [u32; Reason::ALL.len()],
    /// Fail-closed denials (no config, no workload identity), requests and connections.
    pub fail_closed: u32,
}

impl EgressMetrics {
    fn undefined() -> EgressMetrics {
        let u = UNDEFINED;
        EgressMetrics {
            requests: u,
            allowed: u,
            denied: u,
            reasons: [u; Reason::ALL.len()],
            connections: u,
            connections_allowed: u,
            connections_denied: u,
            connections_denied_http_only: u,
            connection_reasons: [u; Reason::ALL.len()],
            fail_closed: u,
        }
    }

    fn define() -> EgressMetrics {
        let by_reason = |prefix: &str| {
            let mut ids = [UNDEFINED; Reason::ALL.len()];
            for (slot, reason) in ids.iter_mut().zip(Reason::ALL) {
                *slot = counter(&format!("{prefix}_{}_total", reason.code()));
            }
            ids
        };
        EgressMetrics {
            requests: counter("krites_egress_requests_total"),
            allowed: counter("krites_egress_allowed_total"),
            denied: counter("krites_egress_denied_total"),
            reasons: by_reason("krites_egress_reason"),
            connections: counter("krites_egress_connections_total"),
            connections_allowed: counter("krites_egress_connections_allowed_total"),
            connections_denied: counter("krites_egress_connections_denied_total"),
            connections_denied_http_only: counter("krites_egress_connections_denied_http_only_total"),
            connection_reasons: by_reason("krites_egress_connections_reason"),
            fail_closed: counter("krites_egress_fail_closed_total"),
        }
    }

    pub fn reason(&self, reason: Reason) -> u32 {
        Reason::ALL.iter().position(|r| *r == reason).and_then(|i| self.reasons.get(i).copied()).unwrap_or(UNDEFINED)
    }

    pub fn connection_reason(&self, reason: Reason) -> u32 {
        Reason::ALL.iter().position(|r| *r == reason).and_then(|i| self.connection_reasons.get(i).copied()).unwrap_or(UNDEFINED)
    }
}

/// A metric id no host defines: Envoy rejects updates to it, and the
/// update is ignored. (Not 0: the host numbers counters from 0, so 0 is the
/// first counter this module defines.)
const UNDEFINED: u32 = u32::MAX;

/// A counter's id; the undefined id if the host refuses it.
pub fn counter(name: &str) -> u32 {
    host::define_metric(METRIC_COUNTER, name).unwrap_or(UNDEFINED)
}

fn gauge(name: &str) -> u32 {
    host::define_metric(METRIC_GAUGE, name).unwrap_or(UNDEFINED)
}

impl Metrics {
    /// Ids that count nothing, for a context created before `on_configure`
    /// has defined the real ones.
    pub fn undefined() -> Metrics {
        let u = UNDEFINED;
        Metrics {
            requests: u,
            allowed: u,
            denied: u,
            reasons: [u; Reason::ALL.len()],
            connection_reasons: [u; Reason::ALL.len()],
            no_config: u,
            no_workload_identity: u,
            identity_mismatch: u,
            identity_no_spiffe_id: u,
            identity_unknown_address: u,
            source_unverified: u,
            log_rule_matches: u,
            out_of_scope: u,
            connections: u,
            connections_allowed: u,
            connections_denied: u,
            connections_http: u,
            connections_denied_http_only: u,
            config_loads: u,
            config_errors: u,
            config_revision: u,
            config_policies: u,
            config_rules: u,
            config_endpoints: u,
            config_compile_micros: u,
            memory_linear_bytes: u,
            egress: EgressMetrics::undefined(),
        }
    }

    /// Defined in every root context; Envoy maps the same name to the same stat.
    pub fn define() -> Metrics {
        let mut reasons = [0; Reason::ALL.len()];
        for (slot, reason) in reasons.iter_mut().zip(Reason::ALL) {
            *slot = counter(&format!("krites_reason_{}_total", reason.code()));
        }
        let mut connection_reasons = [0; Reason::ALL.len()];
        for (slot, reason) in connection_reasons.iter_mut().zip(Reason::ALL) {
            *slot = counter(&format!("krites_connections_reason_{}_total", reason.code()));
        }
        Metrics {
            requests: counter("krites_requests_total"),
            allowed: counter("krites_allowed_total"),
            denied: counter("krites_denied_total"),
            reasons,
            connection_reasons,
            no_config: counter("krites_reason_no_config_total"),
            no_workload_identity: counter("krites_reason_no_workload_identity_total"),
            identity_mismatch: counter("krites_identity_mismatch_total"),
            identity_no_spiffe_id: counter("krites_identity_no_spiffe_id_total"),
            identity_unknown_address: counter("krites_identity_unknown_address_total"),
            source_unverified: counter("krites_source_address_unverified_total"),
            log_rule_matches: counter("krites_log_rule_matches_total"),
            out_of_scope: counter("krites_out_of_scope_total"),
            connections: counter("krites_connections_total"),
            connections_allowed: counter("krites_connections_allowed_total"),
            connections_denied: counter("krites_connections_denied_total"),
            connections_http: counter("krites_connections_http_total"),
            connections_denied_http_only: counter("krites_connections_denied_http_only_total"),
            config_loads: counter("krites_config_loads_total"),
            config_errors: counter("krites_config_errors_total"),
            config_revision: gauge("krites_config_revision"),
            config_policies: gauge("krites_config_policies"),
            config_rules: gauge("krites_config_rules"),
            config_endpoints: gauge("krites_config_endpoints"),
            config_compile_micros: gauge("krites_config_compile_micros"),
            memory_linear_bytes: gauge("krites_memory_linear_bytes"),
            egress: EgressMetrics::define(),
        }
    }

    pub fn reason(&self, reason: Reason) -> u32 {
        Reason::ALL.iter().position(|r| *r == reason).and_then(|i| self.reasons.get(i).copied()).unwrap_or(UNDEFINED)
    }

    pub fn connection_reason(&self, reason: Reason) -> u32 {
        Reason::ALL.iter().position(|r| *r == reason).and_then(|i| self.connection_reasons.get(i).copied()).unwrap_or(UNDEFINED)
    }

    pub fn filter_denial(&self, denial: FilterDenial) -> u32 {
        match denial {
            FilterDenial::NoConfig => self.no_config,
            FilterDenial::NoWorkloadIdentity => self.no_workload_identity,
        }
    }

    pub fn bump(id: u32) {
        host::increment_metric(id, 1);
    }

    pub fn set(id: u32, value: u64) {
        host::record_metric(id, value);
    }

    /// The VM's memory now: after a compile, kept or refused.
    pub fn record_memory(&self) {
        Metrics::set(self.memory_linear_bytes, crate::memory::linear_bytes());
    }
}
