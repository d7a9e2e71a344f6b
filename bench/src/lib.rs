//! A deterministic, seeded generator of Krites plugin configs at any scale,
//! from the YAO Bank tutorial up to a production-sized Calico deployment
//! (294 policies × 68 rules, ~256k endpoint IPs), plus the workload and the
//! request mix the benchmarks decide.
//!
//! Everything is derived from [`Scale`] with a self-contained splitmix64
//! generator, so the same scale and seed give byte-identical JSON on every run
//! and platform. The endpoint addresses are 10.0.0.0/8 data only: nothing here
//! ever opens a connection.
//!
//! Shape of a generated cluster:
//! - namespaces with `team`, `env` (prod/staging/dev) and `istio-injection` labels;
//! - deployments, each one endpoint group (pods sharing namespace, service
//!   account and labels `app`, `version`, `team`, `env`, `tier`), with a
//!   contiguous run of pod IPs. Its ReplicaSet's `pod-template-hash` is drawn
//!   but not a label: control strips it (neither the sidecar's metadata nor
//!   the endpoint table carries it), so the configs are what control delivers;
//! - a `security` tier (about two thirds of the policies, mostly `Pass` rules
//!   with selector sources, some `Deny` by CIDR or by a quarantine label, some
//!   `Allow` for monitoring CIDRs) ending with a baseline policy that passes
//!   prod namespaces on to the `default` tier;
//! - the `default` tier: global and namespaced policies (Calico and Kubernetes
//!   kinds) with `Allow` rules by selector, service account, HTTP method/path,
//!   CIDR and TCP port; one of them lets frontends call the target's `/api`.
//!
//! The target workload (the first deployment) is selected by roughly half the
//! policies, so a benchmark deciding for it sees close to the worst case.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use krites_policy::config::{
    Action, EndpointSpec, EntityRuleSpec, HttpMatchSpec, HttpPathSpec, NamespaceSpec, PolicySpec, PortSpec, ProtocolSpec,
    RuleSpec, ServiceAccountMatchSpec, ServiceAccountSpec, TierDefaultAction, TierSpec, CONFIG_VERSION,
};
pub mod manifests;

use krites_policy::{Peer, PluginConfig, RequestFacts, Workload};

/// How big a generated config is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scale {
    /// Policies in total (both tiers).
    pub policies: usize,
    /// Ingress rules in every policy.
    pub rules_per_policy: usize,
    /// Pod IPs in the endpoint table (grouped into deployments).
    pub endpoints: usize,
    pub namespaces: usize,
    pub seed: u64,
}

/// The seed the presets use.
pub const DEFAULT_SEED: u64 = 0x6b72_6974_6573; // "krites"

impl Scale {
    /// About the size of Calico's YAO Bank tutorial: 3 policies of one rule,
    /// a handful of pods in one namespace.
    pub fn tutorial() -> Scale {
        Scale { policies: 3, rules_per_policy: 1, endpoints: 5, namespaces: 1, seed: DEFAULT_SEED }
    }

    /// About `n` rules in total: policies of 10 rules (one policy below 10),
    /// 10,000 endpoint IPs in 20 namespaces.
    pub fn rules(n: usize) -> Scale {
        let n = n.max(1);
        let policies = n.div_ceil(10);
        let rules_per_policy = (n / policies).max(1);
        Scale { policies, rules_per_policy, endpoints: 10_000, namespaces: 20, seed: DEFAULT_SEED }
    }

    /// The production set Calico measured Dikastes against: 294 policies × 68
    /// rules (~20k rules), ~256k endpoint IPs.
    pub fn calico_production() -> Scale {
        Scale { policies: 294, rules_per_policy: 68, endpoints: 256_000, namespaces: 120, seed: DEFAULT_SEED }
    }

    /// A named preset: `tutorial`, `rules-N` (e.g. `rules-1000`) or `calico`.
    pub fn preset(name: &str) -> Option<Scale> {
        match name {
            "tutorial" => Some(Scale::tutorial()),
            "calico" | "calico-production" => Some(Scale::calico_production()),
            _ => name.strip_prefix("rules-").and_then(|n| n.parse().ok()).map(Scale::rules),
        }
    }

    pub fn with_seed(self, seed: u64) -> Scale {
        Scale { seed, ..self }
    }

    /// Total rules the generated config holds.
    pub fn total_rules(&self) -> usize {
        self.policies * self.rules_per_policy
    }
}

/// splitmix64: tiny, fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: no modulo bias worth mentioning, no division.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

const NAMESPACE_WORDS: &[&str] = &[
    "yaobank", "payments", "checkout", "catalog", "identity", "search", "ledger", "shipping", "analytics", "platform",
    "notifications", "risk", "reporting", "media", "loyalty", "pricing",
];
const TEAMS: &[&str] = &["core", "growth", "payments", "platform", "data", "mobile", "security", "infra"];
const APP_WORDS: &[&str] = &[
    "database", "customer", "summary", "accounts", "cart", "orders", "inventory", "auth", "gateway", "recommender",
    "invoices", "fraud", "profile", "mailer", "scheduler", "reports", "images", "ratings", "search-api", "session",
    "billing", "quotes", "audit", "export", "importer", "pricing-api", "shipping-api", "tax", "wallet", "ledger-api",
    "notifier", "webhooks",
];
/// Values of the `tier` label (not Calico tiers).
const APP_TIERS: &[&str] = &["frontend", "backend", "data", "batch", "edge"];
const TARGET_TIER: &str = "backend";
const HASH_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// The port every request goes to.
pub const TARGET_PORT: u16 = 8080;
/// Trust domain of the generated SPIFFE ids.
pub const TRUST_DOMAIN: &str = "cluster.local";

struct Namespace {
    name: String,
    team: &'static str,
    env: &'static str,
}

struct Deployment {
    namespace: usize,
    app: String,
    version: &'static str,
    tier: &'static str,
    service_account: String,
    quarantined: bool,
    /// Pod IPs are `ip(first_ip..first_ip + replicas)`.
    first_ip: u32,
    replicas: u32,
}

/// The cluster a scale describes: namespaces and deployments. Independent of
/// the policy counts, so growing the policy set keeps the same pods.
struct World {
    namespaces: Vec<Namespace>,
    deployments: Vec<Deployment>,
    apps: Vec<String>,
}

/// Pod IP number `i`: 10.0.1.0 onwards.
fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0100u32.wrapping_add(i))
}

fn app_name(k: usize) -> String {
    let word = APP_WORDS[k % APP_WORDS.len()];
    match k / APP_WORDS.len() {
        0 => word.to_string(),
        n => format!("{word}-{n}"),
    }
}

impl World {
    fn new(scale: &Scale) -> World {
        let mut rng = Rng::new(scale.seed ^ 0x0e4d_90e7_5eed_0001);
        let namespaces: Vec<Namespace> = (0..scale.namespaces.max(1))
            .map(|i| {
                let word = NAMESPACE_WORDS[i % NAMESPACE_WORDS.len()];
                let team = if i == 0 { TEAMS[0] } else { TEAMS[rng.below(TEAMS.len())] };
                let env = match (i, rng.below(10)) {
                    (0, _) => "prod",
                    (_, 0..=4) => "prod",
                    (_, 5..=7) => "staging",
                    _ => "dev",
                };
                let name = match i / NAMESPACE_WORDS.len() {
                    0 => word.to_string(),
                    n => format!("{word}-{n}"),
                };
                Namespace { name, team, env }
            })
            .collect();

        let total = u32::try_from(scale.endpoints.max(1)).unwrap_or(u32::MAX);
        let max_replicas = (total / 8).clamp(1, 15);
        let mut deployments: Vec<Deployment> = Vec::new();
        let mut apps: Vec<String> = Vec::new();
        let mut next_ip = 0u32;
        while next_ip < total {
            let d = deployments.len();
            let replicas = (1 + rng.below(max_replicas as usize) as u32).min(total - next_ip);
            // The ReplicaSet's `pod-template-hash`: drawn so the world stays
            // that of earlier runs, but never a label (control strips it).
            for _ in 0..10 {
                rng.below(HASH_CHARS.len());
            }
            let canary = d >= 2 && rng.chance(25);
            let (namespace, app, version, tier, service_account) = match (d, deployments.last()) {
                // The target: a backend in the first (prod) namespace.
                (0, _) => (0, app_name(0), "v1", TARGET_TIER, app_name(0)),
                // A prod frontend that calls it.
                (1, _) => (0, app_name(1), "v1", "frontend", app_name(1)),
                // A canary: the previous app's next version, same service account.
                (_, Some(prev)) if canary && prev.version == "v1" => {
                    (prev.namespace, prev.app.clone(), "v2", prev.tier, prev.service_account.clone())
                }
                _ => {
                    let app = app_name(apps.len());
                    let sa = if rng.chance(20) { "default".to_string() } else { app.clone() };
                    let tier = APP_TIERS[rng.below(APP_TIERS.len())];
                    (rng.below(namespaces.len()), app, "v1", tier, sa)
                }
            };
            if apps.last() != Some(&app) {
                apps.push(app.clone());
            }
            let quarantined = d >= 2 && rng.below(200) == 0;
            deployments.push(Deployment {
                namespace,
                app,
                version,
                tier,
                service_account,
                quarantined,
                first_ip: next_ip,
                replicas,
            });
            next_ip += replicas;
        }
        World { namespaces, deployments, apps }
    }

    fn target(&self) -> Option<&Deployment> {
        self.deployments.first()
    }

    fn namespace_of(&self, d: &Deployment) -> &Namespace {
        &self.namespaces[d.namespace]
    }

    fn labels(&self, d: &Deployment) -> BTreeMap<String, String> {
        let ns = self.namespace_of(d);
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), d.app.clone());
        labels.insert("version".to_string(), d.version.to_string());
        labels.insert("team".to_string(), ns.team.to_string());
        labels.insert("env".to_string(), ns.env.to_string());
        labels.insert("tier".to_string(), d.tier.to_string());
        if d.quarantined {
            labels.insert("quarantine".to_string(), "true".to_string());
        }
        labels
    }

    fn ips(d: &Deployment) -> impl Iterator<Item = Ipv4Addr> {
        (d.first_ip..d.first_ip + d.replicas).map(pod_ip)
    }

    fn endpoints(&self) -> Vec<EndpointSpec> {
        self.deployments
            .iter()
            .map(|d| EndpointSpec {
                namespace: self.namespace_of(d).name.clone(),
                service_account: d.service_account.clone(),
                labels: self.labels(d),
                ips: World::ips(d).map(|ip| ip.to_string()).collect(),
            })
            .collect()
    }

    fn namespace_specs(&self) -> Vec<NamespaceSpec> {
        self.namespaces
            .iter()
            .map(|ns| NamespaceSpec {
                name: ns.name.clone(),
                labels: [
                    ("env", ns.env),
                    ("team", ns.team),
                    ("istio-injection", "enabled"),
                    ("kubernetes.io/metadata.name", ns.name.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            })
            .collect()
    }

    fn service_accounts(&self) -> Vec<ServiceAccountSpec> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for d in &self.deployments {
            let ns = self.namespace_of(d);
            if !seen.insert((d.namespace, d.service_account.as_str())) {
                continue;
            }
            let mut labels = BTreeMap::new();
            labels.insert("team".to_string(), ns.team.to_string());
            // Deterministic, seed-independent flag: a few accounts hold card data.
            if d.service_account.len() % 7 == 3 {
                labels.insert("pci".to_string(), "true".to_string());
            }
            out.push(ServiceAccountSpec { namespace: ns.name.clone(), name: d.service_account.clone(), labels });
        }
        out
    }
}

fn quoted_set<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let items: BTreeSet<&str> = values.into_iter().collect();
    let inner: Vec<String> = items.iter().map(|v| format!("'{v}'")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Builds the policies; one RNG stream, separate from the world's.
struct PolicyGen<'w> {
    world: &'w World,
    rng: Rng,
}

impl PolicyGen<'_> {
    fn random_app(&mut self) -> String {
        self.rng.pick(&self.world.apps).cloned().unwrap_or_else(|| app_name(0))
    }

    fn target_app(&self) -> String {
        self.world.target().map(|d| d.app.clone()).unwrap_or_else(|| app_name(0))
    }

    fn random_sa(&mut self) -> String {
        let i = self.rng.below(self.world.deployments.len());
        self.world.deployments.get(i).map(|d| d.service_account.clone()).unwrap_or_else(|| "default".to_string())
    }

    fn random_team(&mut self) -> &'static str {
        TEAMS[self.rng.below(TEAMS.len())]
    }

    /// Which workloads a policy applies to: about half the time something the
    /// target matches.
    fn policy_selector(&mut self) -> String {
        if self.rng.chance(55) {
            match self.rng.below(7) {
                0 | 1 => format!("app == '{}'", self.target_app()),
                2 => format!("tier == '{TARGET_TIER}'"),
                3 => "env == 'prod'".to_string(),
                4 => format!("team == '{}'", TEAMS[0]),
                5 => format!("app == '{}' && version == 'v1'", self.target_app()),
                _ => "has(app) && env in {'prod', 'staging'}".to_string(),
            }
        } else {
            match self.rng.below(4) {
                0 | 1 => format!("app == '{}'", self.random_app()),
                2 => format!("tier == '{}'", APP_TIERS[self.rng.below(APP_TIERS.len())]),
                _ => format!("team == '{}' && env == 'staging'", self.random_team()),
            }
        }
    }

    /// A source selector over pod labels, as real policies write them.
    fn source_selector(&mut self) -> String {
        match self.rng.below(8) {
            0..=2 => format!("app == '{}'", self.random_app()),
            3 => format!("app == '{}' && version == 'v1'", self.random_app()),
            4 => {
                let apps: Vec<String> = (0..3).map(|_| self.random_app()).collect();
                format!("app in {}", quoted_set(apps.iter().map(String::as_str)))
            }
            5 => format!("tier == '{}' && env == 'prod'", APP_TIERS[self.rng.below(APP_TIERS.len())]),
            6 => {
                let (a, b) = (self.random_team(), self.random_team());
                format!("team in {} && has(version)", quoted_set([a, b]))
            }
            _ => format!("tier == 'frontend' && app != '{}'", self.random_app()),
        }
    }

    /// A source identity clause: a pod selector, sometimes with a namespace selector.
    fn source_identity(&mut self) -> EntityRuleSpec {
        if self.rng.chance(20) {
            EntityRuleSpec {
                namespace_selector: Some(format!("team == '{}'", self.random_team())),
                selector: self.rng.chance(50).then(|| format!("tier == '{}'", APP_TIERS[self.rng.below(APP_TIERS.len())])),
                ..EntityRuleSpec::default()
            }
        } else {
            EntityRuleSpec { selector: Some(self.source_selector()), ..EntityRuleSpec::default() }
        }
    }

    /// A /24 inside the pod range (~256 pods) or outside the cluster.
    fn cidr(&mut self) -> String {
        let pods = self.world.deployments.last().map_or(1, |d| d.first_ip + d.replicas);
        match self.rng.below(4) {
            0 | 1 => {
                let base = u32::from(pod_ip(self.rng.below(pods as usize) as u32)) & 0xffff_ff00;
                format!("{}/24", Ipv4Addr::from(base))
            }
            2 => format!("10.{}.{}.0/24", 200 + self.rng.below(50), self.rng.below(256)),
            _ => format!("198.51.100.{}/32", self.rng.below(256)),
        }
    }

    fn ports(&mut self) -> Vec<PortSpec> {
        match self.rng.below(5) {
            0..=2 => vec![PortSpec::Number(TARGET_PORT)],
            3 => vec![PortSpec::Text("8000:8999".to_string())],
            _ => vec![PortSpec::Number(80), PortSpec::Number(443)],
        }
    }

    fn methods(&mut self) -> Vec<String> {
        let sets: &[&[&str]] = &[&["GET"], &["GET", "HEAD"], &["GET", "POST"], &["GET", "PUT", "POST", "DELETE"]];
        sets[self.rng.below(sets.len())].iter().map(|m| m.to_string()).collect()
    }

    fn paths(&mut self) -> Vec<HttpPathSpec> {
        let mut paths = vec![HttpPathSpec { prefix: Some(format!("/api/v{}", 1 + self.rng.below(3))), exact: None }];
        if self.rng.chance(50) {
            paths.push(HttpPathSpec { exact: Some("/healthz".to_string()), prefix: None });
        }
        if self.rng.chance(30) {
            paths.push(HttpPathSpec { prefix: Some(format!("/{}", self.random_app())), exact: None });
        }
        paths
    }

    fn tcp(rule: &mut RuleSpec) {
        rule.protocol = Some(ProtocolSpec::Name("TCP".to_string()));
    }

    /// Security tier: mostly Pass by selector; Deny by CIDR or quarantine label;
    /// Allow for monitoring networks.
    fn security_rule(&mut self) -> RuleSpec {
        match self.rng.below(100) {
            0..=84 => RuleSpec { source: Some(self.source_identity()), ..RuleSpec::new(Action::Pass) },
            85..=90 => {
                let nets = (0..1 + self.rng.below(3)).map(|_| self.cidr()).collect();
                RuleSpec { source: Some(EntityRuleSpec { nets, ..EntityRuleSpec::default() }), ..RuleSpec::new(Action::Deny) }
            }
            91..=93 => RuleSpec {
                source: Some(EntityRuleSpec { selector: Some("quarantine == 'true'".to_string()), ..EntityRuleSpec::default() }),
                ..RuleSpec::new(Action::Deny)
            },
            _ => {
                let mut rule = RuleSpec {
                    source: Some(EntityRuleSpec {
                        nets: vec![format!("10.255.{}.0/24", self.rng.below(256))],
                        ..EntityRuleSpec::default()
                    }),
                    destination: Some(EntityRuleSpec {
                        ports: vec![PortSpec::Number(9090), PortSpec::Number(15020)],
                        ..EntityRuleSpec::default()
                    }),
                    ..RuleSpec::new(Action::Allow)
                };
                PolicyGen::tcp(&mut rule);
                rule
            }
        }
    }

    /// Default tier: Allow by selector + port, by service account + methods,
    /// by selector + methods + paths, by CIDR; a few Log and Deny.
    fn app_rule(&mut self, kubernetes: bool) -> RuleSpec {
        let roll = self.rng.below(100);
        let roll = if kubernetes { roll % 40 } else { roll }; // Kubernetes policies: allow by selector or CIDR
        let mut rule = RuleSpec::new(Action::Allow);
        match roll {
            0..=29 => {
                rule.source = Some(self.source_identity());
                rule.destination = Some(EntityRuleSpec { ports: self.ports(), ..EntityRuleSpec::default() });
                PolicyGen::tcp(&mut rule);
            }
            30..=39 => {
                rule.source = Some(EntityRuleSpec { nets: vec![self.cidr()], ..EntityRuleSpec::default() });
                rule.destination = Some(EntityRuleSpec { ports: self.ports(), ..EntityRuleSpec::default() });
                PolicyGen::tcp(&mut rule);
            }
            40..=64 => {
                let names: BTreeSet<String> = (0..1 + self.rng.below(3)).map(|_| self.random_sa()).collect();
                let selector = self.rng.chance(15).then(|| "pci == 'true'".to_string());
                rule.source = Some(EntityRuleSpec {
                    service_accounts: Some(ServiceAccountMatchSpec { names: names.into_iter().collect(), selector }),
                    ..EntityRuleSpec::default()
                });
                rule.http = Some(HttpMatchSpec { methods: self.methods(), paths: Vec::new() });
            }
            65..=89 => {
                rule.source = Some(EntityRuleSpec { selector: Some(self.source_selector()), ..EntityRuleSpec::default() });
                rule.http = Some(HttpMatchSpec { methods: self.methods(), paths: self.paths() });
                PolicyGen::tcp(&mut rule);
            }
            90..=94 => {
                rule.action = Action::Log;
                rule.source = Some(EntityRuleSpec { selector: Some(self.source_selector()), ..EntityRuleSpec::default() });
            }
            _ => {
                rule.action = Action::Deny;
                rule.source = Some(EntityRuleSpec { nets: vec![self.cidr()], ..EntityRuleSpec::default() });
            }
        }
        rule
    }
}

/// Generates the plugin config for `scale`. Same scale, same bytes.
pub fn generate(scale: &Scale) -> PluginConfig {
    let world = World::new(scale);
    let mut gen = PolicyGen { world: &world, rng: Rng::new(scale.seed ^ 0x9011_c1e5_5eed_0002) };
    let target_app = gen.target_app();
    let target_ns = world.namespaces.first().map(|n| n.name.clone()).unwrap_or_default();
    let policy_count = scale.policies;
    let rules = scale.rules_per_policy;
    let security_count = if policy_count >= 4 { policy_count * 2 / 3 } else { 0 };

    let mut policies = Vec::with_capacity(policy_count);
    for i in 0..policy_count {
        let mut spec = PolicySpec::default();
        if i < security_count {
            let baseline = i + 1 == security_count;
            spec.tier = Some("security".to_string());
            spec.kind = Some("GlobalNetworkPolicy".to_string());
            if baseline {
                // Last in the tier: prod namespaces go on to the app policies.
                spec.name = "security-baseline".to_string();
                spec.order = Some(10_000.0);
                spec.selector = Some("all()".to_string());
            } else {
                spec.name = format!("security-{i:04}");
                spec.order = Some(100.0 + (i % 50) as f64 * 10.0);
                spec.selector = Some(gen.policy_selector());
                if gen.rng.chance(10) {
                    spec.namespace_selector = Some("env == 'prod'".to_string());
                }
            }
            spec.ingress = (0..rules.saturating_sub(usize::from(baseline))).map(|_| gen.security_rule()).collect();
            if baseline {
                spec.ingress.push(RuleSpec {
                    source: Some(EntityRuleSpec { namespace_selector: Some("env == 'prod'".to_string()), ..EntityRuleSpec::default() }),
                    ..RuleSpec::new(Action::Pass)
                });
            }
        } else {
            let anchor = i == security_count;
            let namespaced = !anchor && gen.rng.chance(50);
            let kubernetes = namespaced && gen.rng.chance(40);
            if namespaced {
                let ns = if gen.rng.chance(50) { 0 } else { gen.rng.below(world.namespaces.len()) };
                spec.namespace = world.namespaces.get(ns).map(|n| n.name.clone());
            }
            spec.kind = Some(
                match (namespaced, kubernetes) {
                    (false, _) => "GlobalNetworkPolicy",
                    (true, false) => "NetworkPolicy",
                    (true, true) => "KubernetesNetworkPolicy",
                }
                .to_string(),
            );
            if anchor {
                spec.name = format!("allow-frontends-to-{target_app}");
                spec.order = Some(5_000.0);
                spec.selector = Some(format!("app == '{target_app}'"));
            } else {
                spec.name = if kubernetes { format!("knp.default.app-{i:04}") } else { format!("app-{i:04}") };
                spec.order = (!kubernetes).then_some(100.0 + (i % 90) as f64 * 10.0);
                spec.selector = Some(if namespaced && gen.rng.chance(50) {
                    format!("app == '{}'", if spec.namespace.as_deref() == Some(&target_ns) { target_app.clone() } else { gen.random_app() })
                } else {
                    gen.policy_selector()
                });
            }
            spec.ingress = (0..rules.saturating_sub(usize::from(anchor))).map(|_| gen.app_rule(kubernetes)).collect();
            if anchor {
                let mut rule = RuleSpec {
                    source: Some(EntityRuleSpec { selector: Some("tier == 'frontend'".to_string()), ..EntityRuleSpec::default() }),
                    destination: Some(EntityRuleSpec { ports: vec![PortSpec::Number(TARGET_PORT)], ..EntityRuleSpec::default() }),
                    http: Some(HttpMatchSpec {
                        methods: ["GET", "HEAD", "POST"].iter().map(|m| m.to_string()).collect(),
                        paths: vec![HttpPathSpec { prefix: Some("/api".to_string()), exact: None }],
                    }),
                    ..RuleSpec::new(Action::Allow)
                };
                PolicyGen::tcp(&mut rule);
                spec.ingress.push(rule);
            }
        }
        policies.push(spec);
    }

    let tiers = if security_count > 0 {
        vec![TierSpec { name: "security".to_string(), order: Some(100.0), default_action: Some(TierDefaultAction::Deny) }]
    } else {
        Vec::new()
    };
    PluginConfig {
        scope: None,
        version: CONFIG_VERSION,
        revision: Some(format!(
            "krites-bench p{}-r{}-e{}-n{}-s{}",
            scale.policies, scale.rules_per_policy, scale.endpoints, scale.namespaces, scale.seed
        )),
        tiers,
        policies,
        endpoints: world.endpoints(),
        endpoint_table: None,
        namespaces: world.namespace_specs(),
        service_accounts: world.service_accounts(),
        network_sets: Vec::new(),
        services: Vec::new(),
        staged_policies: Vec::new(),
    }
}

/// The workload the benchmarks decide for: the first deployment, a prod
/// backend that about half the policies select.
pub fn target_workload(scale: &Scale) -> Workload {
    let world = World::new(scale);
    match world.target() {
        Some(d) => Workload {
            namespace: world.namespace_of(d).name.clone(),
            service_account: d.service_account.clone(),
            labels: world.labels(d),
            ports: BTreeMap::new(),
        },
        None => Workload::default(),
    }
}

/// What kind of peer a request comes from; the engine takes a different path for some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    /// mTLS, the certificate names the service account of the pod owning the address.
    Verified,
    /// No certificate, from a pod's address.
    Plaintext,
    /// mTLS, the certificate names another service account than the address's owner.
    Mismatch,
    /// No certificate, from an address no pod owns.
    UnknownPlaintext,
    /// mTLS with a valid SPIFFE id, from an address no pod owns.
    UnknownMtls,
    /// mTLS whose certificate carries no SPIFFE id.
    NoSpiffeId,
}

impl RequestKind {
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Verified,
        RequestKind::Plaintext,
        RequestKind::Mismatch,
        RequestKind::UnknownPlaintext,
        RequestKind::UnknownMtls,
        RequestKind::NoSpiffeId,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Verified => "verified",
            RequestKind::Plaintext => "plaintext",
            RequestKind::Mismatch => "mismatch",
            RequestKind::UnknownPlaintext => "unknown-plaintext",
            RequestKind::UnknownMtls => "unknown-mtls",
            RequestKind::NoSpiffeId => "no-spiffe-id",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request whose strings it owns; [`OwnedRequest::facts`] borrows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRequest {
    pub kind: RequestKind,
    pub source_ip: IpAddr,
    pub source_port: u16,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None`: plaintext. `Some(None)`: mTLS without a URI SAN.
    pub uri_san: Option<Option<String>>,
    pub method: String,
    pub path: String,
}

impl OwnedRequest {
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            source_ip: Some(self.source_ip),
            source_port: Some(self.source_port),
            destination_ip: Some(self.destination_ip),
            destination_port: Some(self.destination_port),
            peer: match &self.uri_san {
                None => Peer::Plaintext,
                Some(uri) => Peer::Mtls { uri_san: uri.as_deref() },
            },
            method: Some(&self.method),
            path: Some(&self.path),
        }
    }
}

fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// `n` requests to [`target_workload`]: every [`RequestKind`], from frontends
/// (which the config lets call `/api`) and from random pods, with a spread of
/// methods and paths. Deterministic for a scale.
pub fn request_mix(scale: &Scale, n: usize) -> Vec<OwnedRequest> {
    use RequestKind::*;
    // Weights: 7 verified, 4 plaintext, 3 mismatch, 2 unknown plaintext, 2 unknown mTLS, 1 no SPIFFE id.
    const PATTERN: [RequestKind; 19] = [
        Verified, Plaintext, Mismatch, Verified, UnknownPlaintext, Verified, Plaintext, UnknownMtls, Verified, Mismatch,
        Plaintext, Verified, NoSpiffeId, Verified, UnknownPlaintext, Mismatch, Verified, Plaintext, UnknownMtls,
    ];
    const REQUESTS: &[(&str, &str)] = &[
        ("GET", "/api/v1/accounts/42"),
        ("GET", "/api/v2/orders?id=7"),
        ("POST", "/api/v1/transfers"),
        ("GET", "/healthz"),
        ("HEAD", "/api/v3/status"),
        ("PUT", "/api/v1/accounts/42"),
        ("DELETE", "/admin/users/9"),
        ("GET", "/static/app.js"),
        ("GET", "/api/../admin"),
    ];
    let world = World::new(scale);
    let mut rng = Rng::new(scale.seed ^ 0x7e91_e575_5eed_0003);
    let target_ip = world.target().map_or(IpAddr::V4(pod_ip(0)), |d| IpAddr::V4(pod_ip(d.first_ip)));
    let frontends: Vec<&Deployment> =
        world.deployments.iter().filter(|d| d.tier == "frontend" && world.namespace_of(d).env == "prod").collect();
    let all: Vec<&Deployment> = world.deployments.iter().collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kind = PATTERN[i % PATTERN.len()];
        let pool = if rng.chance(50) && !frontends.is_empty() { &frontends } else { &all };
        let Some(&src) = rng.pick(pool) else { break };
        let src_ip = IpAddr::V4(pod_ip(src.first_ip + rng.below(src.replicas as usize) as u32));
        let src_id = spiffe_id(&world.namespace_of(src).name, &src.service_account);
        let unknown_ip = if rng.chance(50) {
            IpAddr::V4(Ipv4Addr::new(10, 200 + rng.below(50) as u8, rng.below(256) as u8, 1 + rng.below(254) as u8))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + rng.below(254) as u8))
        };
        let (source_ip, uri_san) = match kind {
            Verified => (src_ip, Some(Some(src_id))),
            Plaintext => (src_ip, None),
            Mismatch => {
                // Someone else's certificate: another service account, or the same name in another namespace.
                let other = rng.pick(&all).copied().filter(|o| {
                    o.service_account != src.service_account || o.namespace != src.namespace
                });
                let id = match other {
                    Some(o) => spiffe_id(&world.namespace_of(o).name, &o.service_account),
                    None => spiffe_id(&world.namespace_of(src).name, "stolen"),
                };
                (src_ip, Some(Some(id)))
            }
            UnknownPlaintext => (unknown_ip, None),
            UnknownMtls => (unknown_ip, Some(Some(src_id))),
            NoSpiffeId => (src_ip, Some(if rng.chance(50) { None } else { Some("https://example.com/workload".to_string()) })),
        };
        let (method, path) = REQUESTS[if rng.chance(60) { rng.below(3) } else { rng.below(REQUESTS.len()) }];
        out.push(OwnedRequest {
            kind,
            source_ip,
            source_port: 32768 + (i % 28000) as u16,
            destination_ip: target_ip,
            destination_port: TARGET_PORT,
            uri_san,
            method: method.to_string(),
            path: path.to_string(),
        });
    }
    out
}

/// The compact JSON the filter receives.
pub fn to_json(config: &PluginConfig) -> String {
    serde_json::to_string(config).unwrap_or_default()
}

/// The document `control` would deliver for `config`: its endpoints in the
/// table from [`TABLE_FROM_ADDRESSES`] addresses on, and compressed from
/// [`COMPRESS_FROM_BYTES`] of JSON on (the thresholds control uses).
///
/// [`TABLE_FROM_ADDRESSES`]: krites_policy::config::TABLE_FROM_ADDRESSES
/// [`COMPRESS_FROM_BYTES`]: krites_policy::config::compressed::COMPRESS_FROM_BYTES
pub fn delivered_json(config: &PluginConfig) -> Result<String, String> {
    let addresses: usize = config.endpoint_specs().iter().map(|e| e.ips.len()).sum();
    let config = match addresses >= krites_policy::config::TABLE_FROM_ADDRESSES && config.endpoint_table.is_none() {
        true => config.clone().with_endpoint_table().map_err(|e| format!("endpoint table: {e}"))?,
        false => config.clone(),
    };
    let delivered = config.to_delivered_json().map_err(|e| e.to_string())?;
    serde_json::to_string(&delivered).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use krites_policy::{PolicySet, Verdict, WorkloadPolicy};

    use super::*;

    /// The calico preset, smaller, for debug-mode tests.
    fn calico_reduced() -> Scale {
        Scale { policies: 60, rules_per_policy: 68, endpoints: 20_000, ..Scale::calico_production() }
    }

    fn compile(scale: &Scale) -> WorkloadPolicy {
        let config = generate(scale);
        let set = PolicySet::from_config(&config).unwrap_or_else(|e| panic!("{scale:?} compiles: {e}"));
        WorkloadPolicy::new(Arc::new(set), &target_workload(scale))
    }

    #[test]
    fn same_seed_same_json() {
        for scale in [Scale::tutorial(), Scale::rules(1000), calico_reduced()] {
            assert_eq!(to_json(&generate(&scale)), to_json(&generate(&scale)), "{scale:?}");
            assert_eq!(request_mix(&scale, 200), request_mix(&scale, 200));
        }
        let a = to_json(&generate(&Scale::rules(1000)));
        let b = to_json(&generate(&Scale::rules(1000).with_seed(7)));
        assert_ne!(a, b, "the seed matters");
    }

    #[test]
    fn output_is_pinned_across_platforms() {
        // splitmix64's published first outputs for seed 1234567.
        let mut rng = Rng::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn shape_matches_the_scale() {
        for scale in [Scale::tutorial(), Scale::rules(10), Scale::rules(1000), calico_reduced()] {
            let config = generate(&scale);
            assert_eq!(config.policies.len(), scale.policies, "{scale:?}");
            let rules: usize = config.policies.iter().map(|p| p.ingress.len()).sum();
            assert_eq!(rules, scale.total_rules(), "{scale:?}");
            let ips: usize = config.endpoints.iter().map(|e| e.ips.len()).sum();
            assert_eq!(ips, scale.endpoints, "{scale:?}");
            assert_eq!(config.namespaces.len(), scale.namespaces);
        }
        let calico = Scale::calico_production();
        assert!((19_000..=21_000).contains(&calico.total_rules()));
        let config = generate(&calico);
        let ips: usize = config.endpoints.iter().map(|e| e.ips.len()).sum();
        assert_eq!(ips, 256_000);
        let pass = config.policies.iter().flat_map(|p| &p.ingress).filter(|r| r.action == Action::Pass).count();
        assert!(pass * 2 > calico.total_rules(), "mostly Pass rules: {pass}");
        eprintln!(
            "calico preset: {} policies, {} rules ({pass} Pass), {} endpoint groups, {ips} IPs, {} service accounts",
            config.policies.len(),
            calico.total_rules(),
            config.endpoints.len(),
            config.service_accounts.len()
        );
    }

    #[test]
    fn presets_compile() {
        for name in ["tutorial", "rules-10", "rules-1000", "rules-10000"] {
            let scale = Scale::preset(name).unwrap_or_else(|| panic!("preset {name}"));
            let policy = compile(&scale);
            assert!(policy.policies_selecting() > 0, "{name}: some policy selects the target");
            eprintln!("{name}: {} policies select the target, {} rules apply", policy.policies_selecting(), policy.rule_count());
        }
        let policy = compile(&calico_reduced());
        assert!(policy.policies_selecting() * 3 > calico_reduced().policies, "many policies select the target");
    }

    /// Full calico scale; slow in debug builds: `cargo test -p krites-bench --release -- --ignored`.
    #[test]
    #[ignore]
    fn calico_preset_compiles() {
        let policy = compile(&Scale::calico_production());
        assert!(policy.policies_selecting() > 100);
    }

    fn verdicts(scale: &Scale, n: usize) -> BTreeMap<(RequestKind, bool), usize> {
        let policy = compile(scale);
        let mut seen = BTreeMap::new();
        for r in request_mix(scale, n) {
            let f = r.facts();
            let d = policy.decide(&f);
            let u = policy.decide_unindexed(&f);
            assert_eq!(
                (d.verdict, d.reason, d.decided_by().to_string()),
                (u.verdict, u.reason, u.decided_by().to_string()),
                "index and direct walk agree on {r:?}"
            );
            *seen.entry((r.kind, d.verdict == Verdict::Allow)).or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn compiled_for_the_target_decides_as_the_whole_set() {
        // As the filter compiles: every policy validated, only those selecting the target kept.
        for scale in [Scale::tutorial(), Scale::rules(1000), calico_reduced()] {
            let config = generate(&scale);
            let workload = target_workload(&scale);
            let whole = Arc::new(PolicySet::from_config(&config).unwrap());
            let pruned = Arc::new(PolicySet::for_workload(to_json(&config).into_bytes(), &workload).unwrap());
            assert_eq!(pruned.revision(), whole.revision());
            assert_eq!(pruned.policies_in_config(), whole.policies().len());
            let (a, b) = (WorkloadPolicy::new(whole.clone(), &workload), WorkloadPolicy::new(pruned.clone(), &workload));
            assert_eq!(a.policies_selecting(), b.policies_selecting());
            assert_eq!(b.policies_selecting(), pruned.policies().len(), "{scale:?}: only what selects the target is kept");
            if scale != Scale::tutorial() {
                assert!(pruned.rules().len() < whole.rules().len(), "{scale:?}: some policies select other workloads");
            }
            for request in request_mix(&scale, 400) {
                let facts = request.facts();
                let (x, y) = (a.decide(&facts), b.decide(&facts));
                assert_eq!((x.verdict, x.decided_by().to_string()), (y.verdict, y.decided_by().to_string()), "{scale:?}: {request:?}");
            }
        }
    }

    #[test]
    fn request_mix_is_allowed_and_denied() {
        for scale in [Scale::tutorial(), Scale::rules(10), Scale::rules(1000), calico_reduced()] {
            let seen = verdicts(&scale, 400);
            eprintln!("{scale:?}: (kind, allowed) -> count: {seen:?}");
            assert!(seen.iter().any(|((_, allowed), _)| *allowed), "{scale:?}: some request allowed");
            assert!(seen.iter().any(|((_, allowed), _)| !*allowed), "{scale:?}: some request denied");
            for kind in RequestKind::ALL {
                assert!(seen.keys().any(|(k, _)| *k == kind), "{scale:?}: {kind} present");
            }
        }
    }

    /// What serde writes, the filter's reader reads back as written, with the
    /// same revision: tiers, float orders, nets, ports, HTTP matches and
    /// selectors at every preset scale.
    #[test]
    fn generated_configs_read_back_as_written() {
        for name in ["tutorial", "rules-100", "rules-1000", "calico"] {
            let config = generate(&Scale::preset(name).unwrap());
            let json = to_json(&config);
            let read = PluginConfig::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(read == config, "{name}: read back differs from what was written");
            let pretty = serde_json::to_string_pretty(&config).unwrap();
            assert!(PluginConfig::from_json(pretty.as_bytes()).unwrap() == config, "{name}: pretty");
        }
    }

    /// The compact endpoint table decides every request of the mix as the
    /// JSON endpoints and service accounts do, and is far smaller.
    #[test]
    fn endpoint_table_decides_as_json_endpoints() {
        for scale in [Scale::tutorial(), Scale::rules(1000), calico_reduced()] {
            let json = generate(&scale);
            let table = json.clone().with_endpoint_table().unwrap();
            let (json_text, table_text) = (to_json(&json), to_json(&table));
            let read = PluginConfig::from_json(table_text.as_bytes()).unwrap();
            assert!(read == table, "{scale:?}: the table reads back as written");
            eprintln!(
                "{scale:?}: {} bytes of config with JSON endpoints, {} with the table",
                json_text.len(),
                table_text.len()
            );
            let workload = target_workload(&scale);
            let policy = |c: &PluginConfig| WorkloadPolicy::new(Arc::new(PolicySet::from_config(c).unwrap()), &workload);
            let (a, b) = (policy(&json), policy(&read));
            assert_eq!(a.policies_selecting(), b.policies_selecting());
            for r in request_mix(&scale, 400) {
                let f = r.facts();
                let (x, y) = (a.decide(&f), b.decide(&f));
                assert_eq!((x.verdict, x.reason, x.decided_by().to_string()), (y.verdict, y.reason, y.decided_by().to_string()), "{r:?}");
            }
            if scale.endpoints > 1000 {
                let without = to_json(&PluginConfig { endpoints: Vec::new(), service_accounts: Vec::new(), ..json.clone() }).len();
                let (as_json, as_table) = (json_text.len() - without, table_text.len() - without);
                eprintln!("  endpoints and service accounts: {as_json} bytes as JSON, {as_table} as the table");
                assert!(as_table * 4 < as_json, "{scale:?}: the table is under a quarter of the JSON lists");
            }
        }
    }

    #[test]
    fn thousand_policies_ten_thousand_endpoints_fit_a_wasmplugin() {
        let scale = Scale { policies: 1000, rules_per_policy: 1, endpoints: 10_000, namespaces: 20, seed: DEFAULT_SEED };
        let config = generate(&scale);
        let json = to_json(&config);
        eprintln!(
            "{} policies, {} endpoint groups / 10000 IPs: {} bytes ({:.1} KiB) of plugin config JSON",
            config.policies.len(),
            config.endpoints.len(),
            json.len(),
            json.len() as f64 / 1024.0
        );
        assert!(json.len() < 1 << 20, "{} bytes: over the 1 MiB WasmPlugin limit", json.len());
        assert!(PolicySet::from_json(json.as_bytes()).is_ok());
    }
}
