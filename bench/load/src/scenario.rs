//! What one scale of the load benchmark sends: the generated config, moved
//! onto loopback for the few pods that really send traffic, the sources
//! (address, certificate) standing in for those pods and for attackers, and
//! the request mix with the verdict the engine gives each request.
//!
//! The verdicts come from the engine itself (`WorkloadPolicy::decide`), so
//! the bench checks every configuration against the same oracle before it
//! measures anything.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use krites_bench::{generate, target_workload, Scale, TARGET_PORT, TRUST_DOMAIN};
use krites_policy::{Peer, PluginConfig, PolicySet, RequestFacts, Verdict, Workload, WorkloadPolicy};

/// A named scale of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchScale {
    pub name: &'static str,
    pub scale: Scale,
}

impl BenchScale {
    /// The scales of issue #5: the tutorial's 3 policies; 100 rules / 1k
    /// endpoints; 1,000 rules / 10k endpoints (1,000 one-rule policies: the
    /// size one WasmPlugin carries); Calico's production set (~20k rules,
    /// 256k endpoint IPs).
    pub fn all() -> Vec<BenchScale> {
        let seed = krites_bench::DEFAULT_SEED;
        vec![
            BenchScale { name: "tutorial", scale: Scale::tutorial() },
            BenchScale { name: "p100-e1k", scale: Scale { policies: 100, rules_per_policy: 1, endpoints: 1_000, namespaces: 20, seed } },
            BenchScale { name: "p1000-e10k", scale: Scale { policies: 1_000, rules_per_policy: 1, endpoints: 10_000, namespaces: 20, seed } },
            BenchScale { name: "calico-20k", scale: Scale::calico_production() },
        ]
    }

    pub fn by_name(name: &str) -> Option<BenchScale> {
        BenchScale::all().into_iter().find(|s| s.name == name)
    }
}

/// Who sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Short name, also the client route prefix (`/<config>/<source>/...`).
    pub name: &'static str,
    pub ip: Ipv4Addr,
    /// `Some((namespace, service account))`: mTLS with that account's certificate.
    pub cert: Option<(String, String)>,
    pub what: &'static str,
}

impl Source {
    pub fn spiffe_id(&self) -> Option<String> {
        self.cert.as_ref().map(|(ns, sa)| format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"))
    }
}

/// One request of the mix: GET `path` from `source`, and what the engine says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixRequest {
    pub source: usize,
    pub path: &'static str,
    pub allowed: bool,
    /// The deciding rule or tier default, for the report.
    pub decided_by: String,
}

/// Everything one scale needs.
pub struct Scenario {
    pub bench: BenchScale,
    pub config: PluginConfig,
    pub config_json: String,
    pub workload: Workload,
    pub policy: WorkloadPolicy,
    pub sources: Vec<Source>,
    pub mix: Vec<MixRequest>,
}

/// Where the sources live.
pub const FRONTEND_MTLS: Ipv4Addr = Ipv4Addr::new(127, 0, 61, 1);
pub const FRONTEND_PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 61, 2);
pub const OTHER_MTLS: Ipv4Addr = Ipv4Addr::new(127, 0, 61, 3);
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 61, 66);
pub const UNKNOWN: Ipv4Addr = Ipv4Addr::new(127, 0, 61, 67);

/// (source index, path) of the mix; 10 requests, h2load sends them round-robin.
const MIX: &[(usize, &str)] = &[
    (0, "/api/v1/accounts/42"),
    (0, "/api/v2/orders?id=7"),
    (0, "/api/v1/transfers"),
    (0, "/admin/users/9"),
    (1, "/api/v1/accounts/42"),
    (1, "/healthz"),
    (2, "/api/v1/accounts/42"),
    (3, "/api/v1/accounts/42"),
    (4, "/api/v1/accounts/42"),
    (0, "/static/app.js"),
];

impl Scenario {
    pub fn new(bench: BenchScale) -> Result<Scenario> {
        let mut config = generate(&bench.scale);
        let workload = target_workload(&bench.scale);
        let frontend = config
            .endpoints
            .iter()
            .position(|e| e.namespace == workload.namespace && e.labels.get("tier").map(String::as_str) == Some("frontend"))
            .context("the generated config has no frontend in the target's namespace")?;
        let other = config
            .endpoints
            .iter()
            .position(|e| {
                e.labels.get("tier").map(String::as_str) != Some("frontend")
                    && e.labels.get("app") != workload.labels.get("app")
            })
            .context("the generated config has no second application")?;
        // Two more pods in each group, on loopback: the addresses the load comes from.
        config.endpoints[frontend].ips.extend([FRONTEND_MTLS.to_string(), FRONTEND_PLAIN.to_string()]);
        config.endpoints[other].ips.push(OTHER_MTLS.to_string());
        let identity = |i: usize| (config.endpoints[i].namespace.clone(), config.endpoints[i].service_account.clone());
        let sources = vec![
            Source { name: "frontend", ip: FRONTEND_MTLS, cert: Some(identity(frontend)), what: "frontend pod, its own certificate" },
            Source { name: "frontend-plain", ip: FRONTEND_PLAIN, cert: None, what: "frontend pod, plaintext" },
            Source { name: "other", ip: OTHER_MTLS, cert: Some(identity(other)), what: "another app's pod, its own certificate" },
            Source { name: "stolen", ip: ATTACKER, cert: Some(identity(frontend)), what: "frontend's certificate from an address no pod owns" },
            Source { name: "unknown", ip: UNKNOWN, cert: None, what: "plaintext from an address no pod owns" },
        ];
        let set = PolicySet::from_config(&config).map_err(|e| anyhow::anyhow!("{}: generated config: {e}", bench.name))?;
        let policy = WorkloadPolicy::new(Arc::new(set), &workload);
        // What control would deliver: the endpoint table and compression from its thresholds on.
        let config_json = krites_bench::delivered_json(&config).map_err(|e| anyhow::anyhow!("{}: {e}", bench.name))?;
        let mut scenario = Scenario { bench, config, config_json, workload, policy, sources, mix: Vec::new() };
        scenario.mix = MIX
            .iter()
            .map(|&(source, path)| {
                let (allowed, decided_by) = scenario.decide(source, "GET", path);
                MixRequest { source, path, allowed, decided_by }
            })
            .collect();
        if !scenario.mix.iter().any(|r| r.allowed) || scenario.mix.iter().all(|r| r.allowed) {
            bail!("{}: the request mix must hold both allowed and denied requests", bench.name);
        }
        Ok(scenario)
    }

    /// The engine's verdict for `method path` from source `i`.
    pub fn decide(&self, i: usize, method: &str, path: &str) -> (bool, String) {
        let Some(src) = self.sources.get(i) else { return (false, "no such source".to_string()) };
        let uri = src.spiffe_id();
        let facts = RequestFacts {
            source_ip: Some(IpAddr::V4(src.ip)),
            source_port: Some(40_000),
            destination_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            destination_port: Some(TARGET_PORT),
            peer: match &uri {
                Some(u) => Peer::Mtls { uri_san: Some(u) },
                None => Peer::Plaintext,
            },
            method: Some(method),
            path: Some(path),
        };
        let d = self.policy.decide(&facts);
        (d.verdict == Verdict::Allow, d.decided_by().to_string())
    }

    /// Requests of the mix the engine allows.
    pub fn allowed_share(&self) -> f64 {
        self.mix.iter().filter(|r| r.allowed).count() as f64 / self.mix.len().max(1) as f64
    }

    /// Totals for the report.
    pub fn shape(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("policies", self.config.policies.len()),
            ("rules", self.config.policies.iter().map(|p| p.ingress.len()).sum()),
            ("endpoint_ips", self.config.endpoints.iter().map(|e| e.ips.len()).sum()),
            ("config_bytes", self.config_json.len()),
            // What istiod delivers: the pluginConfig re-encoded as it does
            // (sorted keys, HTML-escaped, numbers as floats).
            (
                "delivered_config_bytes",
                krites_testbed::istiod::extensions::plugin_config_transform(&self.config_json).map_or(0, |t| t.len()),
            ),
            ("policies_selecting", self.policy.policies_selecting()),
            ("rules_applying", self.policy.rule_count()),
        ])
    }
}
