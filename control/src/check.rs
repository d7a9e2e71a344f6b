//! `control check`: one request decided by the filter's own engine, on the
//! very configs `compile` emits: the EGRESS decision at the client's sidecar
//! (when the client is a pod), on the config of the client's namespace, and
//! the INGRESS decision at the destination pod (or at each endpoint pod of a
//! Service), on the config of the destination's namespace.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use krites_policy::engine::{StagedDifference, StagedWorkload};
use krites_policy::{Destination, EgressFacts, EgressPolicy, Peer, PolicySet, RequestFacts, Verdict, Workload, WorkloadPolicy};

use crate::cluster::PodInfo;
use crate::compile::{compile, Compiled, Options};
use crate::inventory::Inventory;

/// Where the request comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A pod of the inventory, by `namespace/name`.
    Pod(String, String),
    /// Any address (e.g. an attacker's), with whatever certificate `--principal` says.
    Address(IpAddr),
}

/// Where the request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A pod of the inventory, by `namespace/name` (the client dials its address).
    Pod(String, String),
    /// An address: a pod's, a ClusterIP, or one outside the cluster.
    Address(IpAddr),
    /// A Service by `namespace/name`, as Istio routes to it: the cluster
    /// `outbound|<port>||<name>.<namespace>.svc.cluster.local`.
    Service(String, String),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub to: Target,
    pub from: Source,
    /// SPIFFE id of the client certificate; default: the `--from` pod's.
    pub principal: Option<String>,
    pub plaintext: bool,
    pub method: String,
    pub path: String,
    pub port: Option<u16>,
    pub trust_domain: String,
}

pub struct Outcome {
    /// Allow only if every side allows.
    pub verdict: Verdict,
    /// First line `ALLOW ...`/`DENY ...`, then one line per side, then details.
    pub report: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no running pod {0}/{1} in the inputs")]
    NoPod(String, String),
    #[error("no Service {0}/{1} in the inputs (or one left out: see the notes)")]
    NoService(String, String),
    #[error("--to-ip and --to-service need a client pod (--from NAMESPACE/POD): the egress decision is its sidecar's")]
    NeedsClientPod,
    #[error("{0}")]
    Compile(#[from] crate::compile::CompileError),
    #[error("{0}")]
    Config(#[from] krites_policy::ConfigErrors),
}

/// One side's decision, as the report shows it.
struct Side {
    /// `egress` or `ingress`.
    label: &'static str,
    verdict: Verdict,
    /// The decision's own line (`ALLOW rule: why; ...`).
    line: String,
    /// Indented detail lines.
    details: String,
    /// The same request decided with the staged policies applied, when
    /// some staged policy touches this workload: its decision line, and
    /// where it differs, the staged policy the difference is counted against.
    staged: Option<(String, Option<String>)>,
}

/// The staged decision's line, and the difference, as the report shows them.
fn staged_report(line: String, enforced: Verdict, difference: Option<StagedDifference<'_>>) -> (String, Option<String>) {
    let difference = difference.map(|d| {
        let against = match d.change {
            Some(c) => format!("counted against {:?} {} {}", c.action, c.kind.as_deref().unwrap_or("staged policy"), c.id),
            None => "no staged policy named".to_string(),
        };
        format!("{} staged where {} is enforced: {against}", verdict_word(d.would), verdict_word(enforced))
    });
    (line, difference)
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "ALLOW",
        Verdict::Deny => "DENY",
    }
}

fn workload(pod: &PodInfo) -> Workload {
    Workload {
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
        labels: pod.labels.clone(),
        ports: pod.ports.clone(),
    }
}

fn first_ip(pod: &PodInfo) -> String {
    pod.ips.first().map(|i| i.to_string()).unwrap_or_default()
}

/// The policy set as the filter reads it: from the bytes of the document a
/// WasmPlugin carries (compressed or not), so the two cannot disagree.
fn as_delivered(compiled: &Compiled) -> Result<PolicySet, CheckError> {
    let bytes = serde_json::to_vec(&compiled.delivered).map_err(crate::compile::CompileError::from)?;
    Ok(PolicySet::from_json(&bytes)?)
}

fn config_line(compiled: &Compiled) -> String {
    format!(
        "revision {} ({} bytes, {} of {} pod addresses)",
        compiled.revision, compiled.bytes, compiled.addresses_emitted, compiled.addresses_known
    )
}

pub fn check(inv: &Inventory, req: &Request) -> Result<Outcome, CheckError> {
    let from_pod = match &req.from {
        Source::Pod(ns, name) => Some(inv.pod(ns, name).ok_or_else(|| CheckError::NoPod(ns.clone(), name.clone()))?),
        Source::Address(_) => None,
    };
    if from_pod.is_none() && !matches!(req.to, Target::Pod(..)) {
        return Err(CheckError::NeedsClientPod);
    }
    // What the client dials and which pods' ingress the request can reach.
    let (dialled, port, ingress_at): (Option<IpAddr>, u16, Vec<(&PodInfo, u16)>) = match &req.to {
        Target::Pod(ns, name) => {
            let pod = inv.pod(ns, name).ok_or_else(|| CheckError::NoPod(ns.clone(), name.clone()))?;
            let port = req.port.or(pod.first_port).unwrap_or(80);
            (pod.ips.first().copied(), port, vec![(pod, port)])
        }
        Target::Address(ip) => {
            let port = req.port.unwrap_or(80);
            (Some(*ip), port, inv.pod_at(*ip).map(|p| (p, port)).into_iter().collect())
        }
        Target::Service(ns, name) => {
            let svc = crate::compile::services(inv)
                .into_iter()
                .find(|s| &s.namespace == ns && &s.name == name)
                .ok_or_else(|| CheckError::NoService(ns.clone(), name.clone()))?;
            let port = req.port.or_else(|| svc.ports.first().map(|p| p.port)).unwrap_or(80);
            let mut pods = Vec::new();
            for group in svc.ports.iter().filter(|p| p.port == port).flat_map(|p| &p.endpoints) {
                for ip in group.ips.iter().filter_map(|i| i.parse::<IpAddr>().ok()) {
                    if let Some(pod) = inv.pod_at(ip) {
                        pods.push((pod, group.port));
                    }
                }
            }
            (svc.cluster_ips.first().and_then(|i| i.parse().ok()), port, pods)
        }
    };

    let mut sides = Vec::new();
    if let Some(client) = from_pod {
        sides.push(egress(inv, req, client, dialled, port)?);
    }
    for (pod, port) in &ingress_at {
        let mut side = ingress(inv, req, from_pod, pod, *port)?;
        if matches!(req.to, Target::Service(..)) {
            // Several endpoints: say which one each line is about.
            let endpoint = format!(" [endpoint {}/{} port {port}]", pod.namespace, pod.name);
            side.line.push_str(&endpoint);
            if let Some((line, _)) = side.staged.as_mut() {
                line.push_str(&endpoint);
            }
        }
        sides.push(side);
    }
    let verdict = if sides.iter().all(|s| s.verdict == Verdict::Allow) { Verdict::Allow } else { Verdict::Deny };
    // The first line: the first side that denies (egress comes first: the
    // request never leaves the client), else the server's decision when there
    // is one (the one that admits the request), else the client's.
    let headline = sides
        .iter()
        .find(|s| s.verdict == Verdict::Deny)
        .or_else(|| sides.iter().rev().find(|s| s.label == "ingress"))
        .or_else(|| sides.first())
        .map(|s| s.line.clone())
        .unwrap_or_default();
    let mut report = format!("{headline}\n");
    for s in &sides {
        let _ = writeln!(report, "{:<7} {}", s.label, s.line);
    }
    // Both verdicts: the staged one never changes the verdict above.
    for s in &sides {
        if let Some((line, difference)) = &s.staged {
            let _ = writeln!(report, "staged  {line} [{}]", s.label);
            if let Some(d) = difference {
                let _ = writeln!(report, "  staged {}: {d}", s.label);
            }
        }
    }
    if let Target::Service(ns, name) = &req.to {
        let _ = writeln!(
            report,
            "  service: {ns}/{name} port {port}: ingress checked at {} endpoint pod(s) the config knows{}",
            ingress_at.len(),
            if ingress_at.is_empty() { " (none: only the egress side decides)" } else { "" }
        );
    } else if ingress_at.is_empty() {
        let _ = writeln!(report, "  ingress: no known pod owns {}: only the egress side decides", dialled.map(|i| i.to_string()).unwrap_or_default());
    }
    for s in &sides {
        report.push_str(&s.details);
    }
    Ok(Outcome { verdict, report })
}

/// The client's sidecar: its own egress rules, against what it dials.
fn egress(inv: &Inventory, req: &Request, client: &PodInfo, dialled: Option<IpAddr>, port: u16) -> Result<Side, CheckError> {
    let compiled = compile(inv, &Options { namespace: Some(client.namespace.clone()), ..Options::default() })?;
    let set = Arc::new(as_delivered(&compiled)?);
    let policy = EgressPolicy::new(set.clone(), &workload(client));
    let cluster;
    let destination = match &req.to {
        Target::Service(ns, name) => {
            cluster = format!("outbound|{port}||{name}.{ns}.svc.cluster.local");
            Destination::Cluster { name: &cluster, ip: dialled, port: Some(port) }
        }
        Target::Pod(..) | Target::Address(_) => Destination::Address { ip: dialled, port: Some(port) },
    };
    let facts = EgressFacts {
        source_ip: client.ips.first().copied(),
        source_port: Some(40000),
        destination,
        method: Some(&req.method),
        path: Some(&req.path),
    };
    let decision = policy.decide(&facts);
    let staged = StagedWorkload::new(&set, &workload(client)).map(|view| {
        let would = view.egress.decide(&facts);
        let difference = view.compare((decision.verdict, decision.policy), (would.verdict, would.policy));
        staged_report(would.to_string(), decision.verdict, difference)
    });
    let mut details = String::new();
    let _ = writeln!(
        details,
        "  egress:  at {}/{} ({}, service account {}); {} of {} policies select its egress",
        client.namespace,
        client.name,
        first_ip(client),
        client.service_account,
        policy.policies_selecting(),
        set.policies().len()
    );
    let to = match &req.to {
        Target::Service(..) => format!("cluster {}", match destination {
            Destination::Cluster { name, .. } => name,
            Destination::Address { .. } => "",
        }),
        _ => {
            let ip = dialled.map(|i| i.to_string()).unwrap_or_default();
            // The config carries only the pods some rule tells apart: say
            // whose address it is when the inputs know.
            match dialled.and_then(|i| inv.pod_at(i)) {
                Some(pod) => format!("{ip}:{port} (pod {}/{} in the inputs)", pod.namespace, pod.name),
                None => format!("{ip}:{port}"),
            }
        }
    };
    let _ = writeln!(details, "           to {to}; {} {}; config {}", req.method, req.path, config_line(&compiled));
    Ok(Side { label: "egress", verdict: decision.verdict, line: decision.to_string(), details, staged })
}

/// The destination pod's sidecar: its ingress rules, against the client.
fn ingress(inv: &Inventory, req: &Request, from_pod: Option<&PodInfo>, target: &PodInfo, port: u16) -> Result<Side, CheckError> {
    let compiled = compile(inv, &Options { namespace: Some(target.namespace.clone()), ..Options::default() })?;
    let set = Arc::new(as_delivered(&compiled)?);
    let policy = WorkloadPolicy::new(set.clone(), &workload(target));
    let source_ip = match (&req.from, from_pod) {
        (_, Some(pod)) => pod.ips.first().copied(),
        (Source::Address(ip), None) => Some(*ip),
        (Source::Pod(..), None) => None,
    };
    let principal = match (&req.principal, from_pod, req.plaintext) {
        (_, _, true) => None,
        (Some(p), _, false) => Some(p.clone()),
        (None, Some(pod), false) => Some(format!("spiffe://{}/ns/{}/sa/{}", req.trust_domain, pod.namespace, pod.service_account)),
        (None, None, false) => None,
    };
    let facts = RequestFacts {
        source_ip,
        source_port: Some(40000),
        destination_ip: target.ips.first().copied(),
        destination_port: Some(port),
        peer: match &principal {
            Some(p) => Peer::Mtls { uri_san: Some(p.as_str()) },
            None => Peer::Plaintext,
        },
        method: Some(&req.method),
        path: Some(&req.path),
    };
    let decision = policy.decide(&facts);
    let staged = StagedWorkload::new(&set, &workload(target)).map(|view| {
        let would = view.ingress.decide(&facts);
        let difference = view.compare((decision.verdict, decision.policy), (would.verdict, would.policy));
        staged_report(would.to_string(), decision.verdict, difference)
    });

    let mut details = String::new();
    let _ = writeln!(
        details,
        "  to:      {}/{} (service account {}, {}), port {port}; {} of {} policies select it",
        target.namespace,
        target.name,
        target.service_account,
        first_ip(target),
        policy.policies_selecting(),
        set.policies().len()
    );
    let from = match (&req.from, from_pod) {
        (Source::Pod(ns, name), Some(pod)) => format!("{ns}/{name} at {}", first_ip(pod)),
        (Source::Address(ip), _) => ip.to_string(),
        (Source::Pod(ns, name), None) => format!("{ns}/{name}"),
    };
    let how = match &principal {
        Some(p) => format!("mTLS as {p}"),
        None => "plaintext".to_string(),
    };
    let _ = writeln!(details, "  from:    {from}, {how}");
    // Network sets that hold the source address: rule selectors match them as they match pods.
    if let Some(ip) = source_ip {
        let sets: Vec<String> = set.universe().network_sets_holding(ip).map(|s| s.object()).collect();
        if !sets.is_empty() {
            let _ = writeln!(details, "  in sets: {}", sets.join(", "));
        }
    }
    let _ = writeln!(details, "  request: {} {}", req.method, req.path);
    let _ = writeln!(details, "  config:  {}", config_line(&compiled));
    Ok(Side { label: "ingress", verdict: decision.verdict, line: decision.to_string(), details, staged })
}
