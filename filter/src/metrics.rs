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

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: u32,
    pub allowed: u32,
    pub denied: u32,
    reasons: [u32; Reason::ALL.len()],
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
}

fn counter(name: &str) -> u32 {
    host::define_metric(METRIC_COUNTER, name).unwrap_or(u32::MAX)
}

fn gauge(name: &str) -> u32 {
    host::define_metric(METRIC_GAUGE, name).unwrap_or(u32::MAX)
}

impl Metrics {
    /// Defined in every root context; Envoy maps the same name to the same stat.
    pub fn define() -> Metrics {
        let mut reasons = [0; Reason::ALL.len()];
        for (slot, reason) in reasons.iter_mut().zip(Reason::ALL) {
            *slot = counter(&format!("krites_reason_{}_total", reason.code()));
        }
        Metrics {
            requests: counter("krites_requests_total"),
            allowed: counter("krites_allowed_total"),
            denied: counter("krites_denied_total"),
            reasons,
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
        }
    }

    pub fn reason(&self, reason: Reason) -> u32 {
        Reason::ALL.iter().position(|r| *r == reason).and_then(|i| self.reasons.get(i).copied()).unwrap_or(u32::MAX)
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
}
