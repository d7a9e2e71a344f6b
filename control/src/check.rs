//! `control check`: one request decided by the filter's own engine, on the
//! very config `compile` emits for the destination's namespace.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use krites_policy::{Peer, PolicySet, RequestFacts, Verdict, Workload, WorkloadPolicy};

use crate::compile::{compile, Options};
use crate::inventory::Inventory;

/// Where the request comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A pod of the inventory, by `namespace/name`.
    Pod(String, String),
    /// Any address (e.g. an attacker's), with whatever certificate `--principal` says.
    Address(IpAddr),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub to: (String, String),
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
    pub verdict: Verdict,
    /// First line `ALLOW ...`/`DENY ...`, then details.
    pub report: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no running pod {0}/{1} in the inputs")]
    NoPod(String, String),
    #[error("{0}")]
    Compile(#[from] crate::compile::CompileError),
    #[error("{0}")]
    Config(#[from] krites_policy::ConfigErrors),
}

pub fn check(inv: &Inventory, req: &Request) -> Result<Outcome, CheckError> {
    let (to_ns, to_name) = &req.to;
    let target = inv.pod(to_ns, to_name).ok_or_else(|| CheckError::NoPod(to_ns.clone(), to_name.clone()))?;
    let compiled = compile(inv, &Options { namespace: Some(to_ns.clone()) })?;
    let set = Arc::new(PolicySet::from_config(&compiled.config)?);
    let workload = Workload {
        namespace: target.namespace.clone(),
        service_account: target.service_account.clone(),
        labels: target.labels.clone(),
        ports: target.ports.clone(),
    };
    let policy = WorkloadPolicy::new(set.clone(), &workload);

    let (source_ip, from_pod) = match &req.from {
        Source::Pod(ns, name) => {
            let pod = inv.pod(ns, name).ok_or_else(|| CheckError::NoPod(ns.clone(), name.clone()))?;
            (pod.ips.first().copied(), Some(pod))
        }
        Source::Address(ip) => (Some(*ip), None),
    };
    let principal = match (&req.principal, from_pod, req.plaintext) {
        (_, _, true) => None,
        (Some(p), _, false) => Some(p.clone()),
        (None, Some(pod), false) => Some(format!("spiffe://{}/ns/{}/sa/{}", req.trust_domain, pod.namespace, pod.service_account)),
        (None, None, false) => None,
    };
    let port = req.port.or(target.first_port).unwrap_or(80);
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

    let mut report = format!("{decision}\n");
    let _ = writeln!(
        report,
        "  to:      {to_ns}/{to_name} (service account {}, {}), port {port}; {} of {} policies select it",
        target.service_account,
        target.ips.first().map(|i| i.to_string()).unwrap_or_default(),
        policy.policies_selecting(),
        set.policies().len()
    );
    let from = match (&req.from, from_pod) {
        (Source::Pod(ns, name), Some(pod)) => format!("{ns}/{name} at {}", pod.ips.first().map(|i| i.to_string()).unwrap_or_default()),
        (Source::Address(ip), _) => ip.to_string(),
        (Source::Pod(ns, name), None) => format!("{ns}/{name}"),
    };
    let how = match &principal {
        Some(p) => format!("mTLS as {p}"),
        None => "plaintext".to_string(),
    };
    let _ = writeln!(report, "  from:    {from}, {how}");
    let _ = writeln!(report, "  request: {} {}", req.method, req.path);
    let _ = writeln!(report, "  config:  revision {} ({} bytes, {} of {} pod addresses)", compiled.revision, compiled.bytes, compiled.addresses_emitted, compiled.addresses_known);
    Ok(Outcome { verdict: decision.verdict, report })
}
