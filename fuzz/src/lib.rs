//! Shared pieces of the Krites fuzz targets: arbitrary request facts resolved
//! against a config's own vocabulary (its pod addresses, namespaces, service
//! accounts, methods and paths), and the invariants every decision must keep.
//!
//! A broken invariant panics; libFuzzer reports it as a crash and saves the input.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a fuzz harness reports by panicking

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use krites_policy::config::Action;
use krites_policy::engine::IdentityCheck;
use krites_policy::spiffe::SpiffeId;
use krites_policy::{Decision, Peer, PluginConfig, Reason, RequestFacts, Verdict, Workload, WorkloadPolicy};

/// What a config names, for requests that hit its rules rather than miss everything.
#[derive(Debug, Default, Clone)]
pub struct Vocabulary {
    /// Pod addresses with their owner's (namespace, service account).
    pub pods: Vec<(IpAddr, String, String)>,
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    /// Addresses from rule CIDRs (their network address), so nets rules get hit.
    pub net_addrs: Vec<IpAddr>,
    /// Pod address (IPv4-mapped folded) -> index into `pods`.
    pub owner: HashMap<IpAddr, usize>,
}

impl Vocabulary {
    pub fn of(config: &PluginConfig) -> Vocabulary {
        let mut v = Vocabulary::default();
        let mut namespaces = BTreeSet::new();
        let mut service_accounts = BTreeSet::new();
        let mut methods: BTreeSet<String> = ["GET", "POST", "PUT", "DELETE", "HEAD", "get", "*", ""].map(String::from).into();
        let mut paths: BTreeSet<String> = ["/", "/api", "/api/v1/x", "/healthz", "/admin"].map(String::from).into();
        let mut nets = BTreeSet::new();
        for ep in &config.endpoints {
            namespaces.insert(ep.namespace.clone());
            service_accounts.insert(ep.service_account.clone());
            for ip in &ep.ips {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    v.owner.insert(ip.to_canonical(), v.pods.len());
                    v.pods.push((ip, ep.namespace.clone(), ep.service_account.clone()));
                }
            }
        }
        for ns in &config.namespaces {
            namespaces.insert(ns.name.clone());
        }
        for sa in &config.service_accounts {
            namespaces.insert(sa.namespace.clone());
            service_accounts.insert(sa.name.clone());
        }
        for p in &config.policies {
            if let Some(ns) = &p.namespace {
                namespaces.insert(ns.clone());
            }
            for r in &p.ingress {
                if let Some(http) = &r.http {
                    methods.extend(http.methods.iter().cloned());
                    for path in &http.paths {
                        for text in [&path.exact, &path.prefix].into_iter().flatten() {
                            paths.insert(text.clone());
                            paths.insert(format!("{text}/x"));
                            paths.insert(format!("{text}x"));
                        }
                    }
                }
                if let Some(sas) = r.source.as_ref().and_then(|s| s.service_accounts.as_ref()) {
                    service_accounts.extend(sas.names.iter().cloned());
                }
                for entity in [&r.source, &r.destination].into_iter().flatten() {
                    for net in entity.nets.iter().chain(&entity.not_nets) {
                        if let Ok(ip) = net.split('/').next().unwrap_or("").parse::<IpAddr>() {
                            nets.insert(ip);
                        }
                    }
                }
            }
        }
        v.namespaces = namespaces.into_iter().collect();
        v.service_accounts = service_accounts.into_iter().collect();
        v.methods = methods.into_iter().collect();
        v.paths = paths.into_iter().collect();
        v.net_addrs = nets.into_iter().collect();
        v
    }
}

fn pick<T: Clone>(items: &[T], i: usize) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        items.get(i % items.len()).cloned()
    }
}

fn mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

#[derive(Arbitrary, Debug, Clone)]
pub enum IpIn {
    None,
    /// The address of a known pod.
    Pod(u16),
    /// A known pod's address written as IPv4-mapped IPv6.
    PodMapped(u16),
    /// A known address plus a small offset (its neighbours are often unknown).
    PodNeighbour(u16, i8),
    /// The network address of a rule CIDR, plus an offset.
    Net(u16, u8),
    V4([u8; 4]),
    V4Mapped([u8; 4]),
    V6([u8; 16]),
}

impl IpIn {
    fn resolve(&self, vocab: &Vocabulary) -> Option<IpAddr> {
        let pod = |i: u16| pick(&vocab.pods, i as usize).map(|(ip, _, _)| ip);
        match *self {
            IpIn::None => None,
            IpIn::Pod(i) => pod(i).or(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))),
            IpIn::PodMapped(i) => match pod(i) {
                Some(IpAddr::V4(v4)) => Some(mapped(v4)),
                other => other,
            },
            IpIn::PodNeighbour(i, d) => pod(i).map(|ip| offset(ip, i128::from(d))),
            IpIn::Net(i, d) => pick(&vocab.net_addrs, i as usize).map(|ip| offset(ip, i128::from(d))),
            IpIn::V4(b) => Some(IpAddr::V4(Ipv4Addr::from(b))),
            IpIn::V4Mapped(b) => Some(mapped(Ipv4Addr::from(b))),
            IpIn::V6(b) => Some(IpAddr::V6(Ipv6Addr::from(b))),
        }
    }
}

fn offset(ip: IpAddr, d: i128) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from((i128::from(u32::from(v4)) + d).rem_euclid(1 << 32) as u32)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add_signed(d))),
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum NameIn {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum SanIn {
    /// mTLS without a URI SAN.
    Absent,
    Raw(String),
    /// The SPIFFE id of the pod owning the source address (or a variation of it).
    SourceOwner { variation: u8 },
    /// The SPIFFE id of the pod owning some known address (or a variation of it).
    OwnerOf { pod: u16, variation: u8 },
    Spiffe { trust_domain: NameIn, namespace: NameIn, service_account: NameIn },
}

fn name(n: &NameIn, known: &[String]) -> String {
    match n {
        NameIn::Known(i) => pick(known, *i as usize).unwrap_or_else(|| "default".to_string()),
        NameIn::Raw(s) => s.clone(),
    }
}

/// An Istio SPIFFE id, or one of the near misses a parser must not accept as it.
fn spiffe_variation(ns: &str, sa: &str, variation: u8) -> String {
    match variation % 12 {
        0..=3 => format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
        4 => format!("spiffe://other.domain/ns/{ns}/sa/{sa}"),
        5 => format!("spiffe://cluster.local/ns/{ns}/sa/{sa}/"),
        6 => format!("SPIFFE://cluster.local/ns/{ns}/sa/{sa}"),
        7 => format!("spiffe://cluster.local/ns/{}/sa/{sa}", ns.to_uppercase()),
        8 => format!("spiffe://cluster.local/ns/{ns}/sa/{sa} "),
        9 => format!("spiffe://cluster.local/ns/{ns}/sa/{sa}%00"),
        10 => format!("spiffe://cluster.local/ns/{sa}/sa/{ns}"),
        _ => format!("spiffe://cluster.local//ns/{ns}/sa/{sa}"),
    }
}

impl SanIn {
    fn resolve(&self, vocab: &Vocabulary, source: Option<IpAddr>) -> Option<String> {
        let pod = |i: usize| {
            pick(&vocab.pods, i).map(|(_, ns, sa)| (ns, sa)).unwrap_or_else(|| ("default".into(), "default".into()))
        };
        match self {
            SanIn::Absent => None,
            SanIn::Raw(s) => Some(s.clone()),
            SanIn::SourceOwner { variation } => {
                let owner = source.and_then(|ip| vocab.owner.get(&ip.to_canonical()).copied());
                let (ns, sa) = pod(owner.unwrap_or(usize::from(*variation)));
                Some(spiffe_variation(&ns, &sa, *variation))
            }
            SanIn::OwnerOf { pod: i, variation } => {
                let (ns, sa) = pod(usize::from(*i));
                Some(spiffe_variation(&ns, &sa, *variation))
            }
            SanIn::Spiffe { trust_domain, namespace, service_account } => Some(format!(
                "spiffe://{}/ns/{}/sa/{}",
                name(trust_domain, &["cluster.local".to_string()]),
                name(namespace, &vocab.namespaces),
                name(service_account, &vocab.service_accounts)
            )),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum PeerIn {
    Plaintext,
    Mtls(SanIn),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum TextIn {
    Known(u8),
    Raw(String),
    /// A known value with raw text appended (`/api` + `/../admin`).
    Suffixed(u8, String),
}

fn text(t: &TextIn, known: &[String]) -> String {
    match t {
        TextIn::Known(i) => pick(known, *i as usize).unwrap_or_default(),
        TextIn::Raw(s) => s.clone(),
        TextIn::Suffixed(i, s) => format!("{}{s}", pick(known, *i as usize).unwrap_or_default()),
    }
}

/// Pieces of request targets that servers read differently.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PathPiece {
    Slash,
    Dot,
    DotDot,
    EncodedDot,
    EncodedDotUpper,
    DoubleEncodedDot,
    OverlongDot,
    Backslash,
    EncodedSlash,
    Semicolon,
    Query,
    Fragment,
    Percent,
    EncodedPercent,
    /// A segment of a known path.
    Segment(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum PathIn {
    Text(TextIn),
    /// A known path followed by pieces.
    Pieces(u8, Vec<PathPiece>),
}

fn path(p: &PathIn, known: &[String]) -> String {
    match p {
        PathIn::Text(t) => text(t, known),
        PathIn::Pieces(base, pieces) => {
            let mut out = pick(known, usize::from(*base)).unwrap_or_default();
            let segments: Vec<&str> = known.iter().flat_map(|p| p.split('/')).filter(|s| !s.is_empty()).collect();
            for piece in pieces.iter().take(32) {
                out.push_str(match piece {
                    PathPiece::Slash => "/",
                    PathPiece::Dot => ".",
                    PathPiece::DotDot => "..",
                    PathPiece::EncodedDot => "%2e",
                    PathPiece::EncodedDotUpper => "%2E",
                    PathPiece::DoubleEncodedDot => "%252e",
                    PathPiece::OverlongDot => "%c0%ae",
                    PathPiece::Backslash => "\\",
                    PathPiece::EncodedSlash => "%2f",
                    PathPiece::Semicolon => ";x",
                    PathPiece::Query => "?q=/../admin",
                    PathPiece::Fragment => "#/..",
                    PathPiece::Percent => "%",
                    PathPiece::EncodedPercent => "%25",
                    PathPiece::Segment(i) => pick(&segments, usize::from(*i)).unwrap_or("x"),
                });
            }
            out
        }
    }
}

/// Arbitrary request facts, resolved against a [`Vocabulary`].
#[derive(Arbitrary, Debug, Clone)]
pub struct FactsIn {
    pub source_ip: IpIn,
    pub source_port: Option<u16>,
    pub destination_ip: Option<IpIn>,
    pub destination_port: Option<u16>,
    pub peer: PeerIn,
    pub method: Option<TextIn>,
    pub path: Option<PathIn>,
}

/// Request facts that own their strings; [`OwnedFacts::facts`] borrows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFacts {
    pub source_ip: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    /// `None`: plaintext; `Some(None)`: mTLS without a URI SAN.
    pub uri_san: Option<Option<String>>,
    pub method: Option<String>,
    pub path: Option<String>,
}

impl OwnedFacts {
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            source_ip: self.source_ip,
            source_port: self.source_port,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            peer: match &self.uri_san {
                None => Peer::Plaintext,
                Some(san) => Peer::Mtls { uri_san: san.as_deref() },
            },
            method: self.method.as_deref(),
            path: self.path.as_deref(),
        }
    }

    /// A plain HTTP request.
    pub fn http(source_ip: Option<IpAddr>, uri_san: Option<Option<String>>, method: &str, path: &str) -> OwnedFacts {
        OwnedFacts {
            source_ip,
            source_port: Some(40000),
            destination_ip: None,
            destination_port: Some(8080),
            uri_san,
            method: Some(method.to_string()),
            path: Some(path.to_string()),
        }
    }
}

impl FactsIn {
    pub fn resolve(&self, vocab: &Vocabulary) -> OwnedFacts {
        let source_ip = self.source_ip.resolve(vocab);
        OwnedFacts {
            source_ip,
            source_port: self.source_port,
            destination_ip: self.destination_ip.as_ref().and_then(|ip| ip.resolve(vocab)),
            destination_port: self.destination_port,
            uri_san: match &self.peer {
                PeerIn::Plaintext => None,
                PeerIn::Mtls(san) => Some(san.resolve(vocab, source_ip)),
            },
            method: self.method.as_ref().map(|m| text(m, &vocab.methods)),
            path: self.path.as_ref().map(|p| path(p, &vocab.paths)),
        }
    }
}

/// Requests a config's own vocabulary suggests: from each known pod (plaintext,
/// its own certificate, another pod's certificate, no SPIFFE id), from unknown
/// addresses, with the config's methods and paths. Bounded, deterministic.
pub fn sample_requests(vocab: &Vocabulary, limit: usize) -> Vec<OwnedFacts> {
    let mut out = Vec::new();
    let spiffe = |ns: &str, sa: &str| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    let unknown = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7))];
    let mut i = 0usize;
    let mut next_call = || {
        i += 1;
        let method = pick(&vocab.methods, i * 7).unwrap_or_default();
        let path = pick(&vocab.paths, i * 13).unwrap_or_default();
        (method, path)
    };
    for (k, (ip, ns, sa)) in vocab.pods.iter().take(8).enumerate() {
        let (m, p) = next_call();
        out.push(OwnedFacts::http(Some(*ip), None, &m, &p));
        let (m, p) = next_call();
        out.push(OwnedFacts::http(Some(*ip), Some(Some(spiffe(ns, sa))), &m, &p));
        let (m, p) = next_call();
        let other = pick(&vocab.pods, k + 1).map(|(_, n, s)| spiffe(&n, &s)).unwrap_or_else(|| spiffe(ns, "stolen"));
        out.push(OwnedFacts::http(Some(*ip), Some(Some(other)), &m, &p));
        let (m, p) = next_call();
        out.push(OwnedFacts::http(Some(*ip), Some(None), &m, &p));
        if let IpAddr::V4(v4) = ip {
            let (m, p) = next_call();
            out.push(OwnedFacts::http(Some(mapped(*v4)), Some(Some(spiffe(ns, sa))), &m, &p));
        }
        let (m, p) = next_call();
        out.push(OwnedFacts::http(pick(&unknown, k), Some(Some(spiffe(ns, sa))), &m, &p));
    }
    for (k, ip) in vocab.net_addrs.iter().take(4).enumerate() {
        let (m, p) = next_call();
        out.push(OwnedFacts::http(Some(*ip), pick(&vocab.pods, k).map(|(_, n, s)| Some(spiffe(&n, &s))), &m, &p));
    }
    for ip in unknown {
        let (m, p) = next_call();
        out.push(OwnedFacts::http(Some(ip), None, &m, &p));
    }
    let (m, p) = next_call();
    out.push(OwnedFacts::http(None, None, &m, &p));
    out.push(OwnedFacts { method: None, path: None, ..OwnedFacts::http(None, None, "", "") });
    out.truncate(limit);
    out
}

/// Workloads to specialise a config for: the pods it lists, and one it does not.
pub fn sample_workloads(config: &PluginConfig, limit: usize) -> Vec<Workload> {
    let mut out: Vec<Workload> = Vec::new();
    for ep in &config.endpoints {
        if out.len() + 2 >= limit {
            break;
        }
        let w = Workload {
            namespace: ep.namespace.clone(),
            service_account: ep.service_account.clone(),
            labels: ep.labels.clone(),
            ports: [("http".to_string(), 8080), ("grpc".to_string(), 9090)].into(),
        };
        if !out.contains(&w) {
            out.push(w);
        }
    }
    let ns = config.policies.iter().find_map(|p| p.namespace.clone()).unwrap_or_else(|| "default".to_string());
    out.push(Workload {
        namespace: ns.clone(),
        service_account: "default".into(),
        labels: [("app".to_string(), "database".to_string())].into(),
        ports: Default::default(),
    });
    out.push(Workload { namespace: ns, service_account: "unlabelled".into(), ..Default::default() });
    out
}

/// Every invariant of one decision. Returns the decision's (verdict, reason,
/// decided-by) so callers can compare decisions.
pub fn check_decision(policy: &WorkloadPolicy, facts: &RequestFacts<'_>) -> (Verdict, Reason, String) {
    let d = policy.decide(facts);
    let key = (d.verdict, d.reason, d.decided_by().to_string());

    // The index never changes an answer.
    let u = policy.decide_unindexed(facts);
    let ukey = (u.verdict, u.reason, u.decided_by().to_string());
    assert_eq!(key, ukey, "decide and decide_unindexed disagree on {facts:?}");
    let mut logs = 0usize;
    let l = policy.decide_logging(facts, &mut |_| logs += 1);
    assert_eq!(key, (l.verdict, l.reason, l.decided_by().to_string()), "decide_logging disagrees on {facts:?}");

    check_provenance(&d);
    check_two_factors(policy, facts, &d);

    // IPv4 and IPv4-mapped IPv6 are the same address.
    let twin = match facts.source_ip {
        Some(IpAddr::V4(v4)) => Some(mapped(v4)),
        Some(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4),
        None => None,
    };
    if let Some(twin) = twin {
        let t = policy.decide(&RequestFacts { source_ip: Some(twin), ..*facts });
        assert_eq!(key, (t.verdict, t.reason, t.decided_by().to_string()), "{twin} decides unlike {:?} for {facts:?}", facts.source_ip);
    }
    key
}

/// A decision names why: a deciding rule of the right action, or a tier.
fn check_provenance(d: &Decision<'_, '_>) {
    assert_eq!(d.verdict, d.reason.verdict());
    match d.reason {
        Reason::AllowRule => assert!(d.rule.is_some_and(|r| r.action == Action::Allow) && d.policy.is_some(), "{d:?}"),
        Reason::DenyRule => assert!(d.rule.is_some_and(|r| r.action == Action::Deny) && d.policy.is_some(), "{d:?}"),
        Reason::TierDefaultDeny => assert!(d.rule.is_none() && d.tier.is_some_and(|t| !t.is_empty()), "{d:?}"),
        Reason::NoPolicySelects | Reason::AllTiersPassed => assert!(d.rule.is_none(), "{d:?}"),
    }
    let text = d.to_string();
    if d.verdict == Verdict::Deny {
        assert!(d.decided_by().to_string() != "profile", "a denial must name a rule or a tier: {text}");
    }
    assert!(text.starts_with(if d.allowed() { "ALLOW " } else { "DENY " }), "{text}");
}

/// The two-factor rule, checked against an independent reading of the facts:
/// when the certificate is unusable or names someone else than the owner of the
/// source address, no Allow rule may have matched on source identity, and the
/// request gets nothing plaintext from the same address would not.
fn check_two_factors(policy: &WorkloadPolicy, facts: &RequestFacts<'_>, d: &Decision<'_, '_>) {
    let universe = policy.policy_set().universe();
    let owner = facts.source_ip.and_then(|ip| universe.owner_of(ip)).and_then(|g| universe.group(g));
    let Peer::Mtls { uri_san } = facts.peer else {
        assert!(matches!(d.identity, IdentityCheck::Address { .. }), "plaintext judged as {:?}", d.identity);
        return;
    };
    let cert = uri_san.and_then(SpiffeId::parse);
    let agree = matches!((cert, owner), (Some(c), Some(o)) if c.namespace == o.namespace() && c.service_account == o.service_account());
    assert_eq!(agree, matches!(d.identity, IdentityCheck::Verified { .. }), "{:?} for {facts:?}", d.identity);
    if agree {
        return;
    }
    // Never looser than the address alone: if allowed, plaintext from the
    // same address is allowed too.
    if d.allowed() {
        let plaintext = policy.decide(&RequestFacts { peer: Peer::Plaintext, ..*facts });
        assert!(plaintext.allowed(), "{d}\nbut plaintext from the same address: {plaintext}\n{facts:?}");
    }
    let Some(rule) = d.rule.filter(|r| r.action == Action::Allow) else { return };
    let identity = &rule.source.identity;
    if cert.is_some() && owner.is_none() {
        // An unknown address satisfies only negative clauses (notSelector),
        // or positive ones through a network set that holds it.
        let by_set = identity.matches_at(krites_policy::model::SourceView::Unknown, facts.source_ip, universe);
        assert!(identity.matches_unknown() || by_set, "{} allowed a certificate from an unknown address on identity: {facts:?}", rule.id);
    } else {
        assert!(identity.is_empty(), "{} allowed on identity though the factors disagree: {facts:?} ({:?})", rule.id, d.identity);
    }
}

/// The `decide` target's fixed configs and input, shared with its seed generator.
pub mod decide {
    use std::sync::{Arc, OnceLock};

    use arbitrary::Arbitrary;
    use krites_bench::Scale;
    use krites_policy::{PluginConfig, PolicySet, WorkloadPolicy};

    use super::{check_decision, sample_workloads, FactsIn, OwnedFacts, Vocabulary};

    const YAOBANK: &str = include_str!("../../tests/fixtures/yaobank-plugin-config.json");

    pub struct Target {
        pub name: &'static str,
        pub workloads: Vec<String>,
        pub policies: Vec<WorkloadPolicy>,
        pub vocab: Vocabulary,
    }

    /// YAO Bank as `control` compiles it, and a generated config with 100
    /// rules over 10,000 pod addresses; each with a few workloads.
    pub fn targets() -> &'static [Target] {
        static TARGETS: OnceLock<Vec<Target>> = OnceLock::new();
        TARGETS.get_or_init(|| {
            let yaobank = PluginConfig::from_json(YAOBANK.as_bytes()).expect("the YAO Bank fixture parses");
            let scale = Scale::rules(100);
            let generated = krites_bench::generate(&scale);
            let mut out = Vec::new();
            for (name, config, extra) in
                [("yaobank", yaobank, None), ("rules100", generated, Some(krites_bench::target_workload(&scale)))]
            {
                let set = Arc::new(PolicySet::from_config(&config).expect("the fixed configs compile"));
                let mut workloads = sample_workloads(&config, 4);
                workloads.extend(extra);
                let policies = workloads.iter().map(|w| WorkloadPolicy::new(Arc::clone(&set), w)).collect();
                let workloads = workloads.iter().map(|w| format!("{}/{}", w.namespace, w.service_account)).collect();
                out.push(Target { name, workloads, policies, vocab: Vocabulary::of(&config) });
            }
            out
        })
    }

    #[derive(Arbitrary, Debug, Clone)]
    pub struct Input {
        pub target: u8,
        pub workload: u8,
        pub facts: FactsIn,
    }

    /// The target and workload an input picks, and its facts.
    pub fn resolve(input: &Input) -> Option<(&'static Target, usize, OwnedFacts)> {
        let targets = targets();
        let target = targets.get(usize::from(input.target) % targets.len())?;
        let workload = usize::from(input.workload) % target.policies.len().max(1);
        Some((target, workload, input.facts.resolve(&target.vocab)))
    }

    pub fn run(input: &Input) {
        if let Some((target, workload, owned)) = resolve(input) {
            if let Some(policy) = target.policies.get(workload) {
                check_decision(policy, &owned.facts());
            }
        }
    }
}
