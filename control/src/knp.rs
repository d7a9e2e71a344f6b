//! Kubernetes `NetworkPolicy` in Calico's terms (Calico's
//! `K8sNetworkPolicyToCalico`): a namespaced policy `knp.default.<name>` in the
//! default tier, order 1000, Allow rules only; a selected pod that no rule
//! admits is denied by the tier's default.

use std::fmt::Write;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use krites_policy::config::{
    Action, EntityRuleSpec, PolicySpec, PolicyType, PortSpec, ProtocolSpec, RuleSpec,
};
use krites_policy::ConfigError;

pub const KIND: &str = "NetworkPolicy.networking.k8s.io";
const ORDER: f64 = 1000.0;

/// Converts one Kubernetes NetworkPolicy; problems name the Kubernetes field.
pub fn convert(np: &NetworkPolicy) -> Result<PolicySpec, Vec<ConfigError>> {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = format!("{KIND}/{namespace}/{name}");
    let mut errors = Vec::new();
    let mut err = |field: String, problem: String| errors.push(ConfigError { object: object.clone(), field, problem });
    let spec = np.spec.clone().unwrap_or_default();

    let mut selector = "projectcalico.org/orchestrator == 'k8s'".to_string();
    let pod_selector = spec.pod_selector.clone().unwrap_or_default();
    if let Some(s) = label_selector(&pod_selector, "spec.podSelector", &mut err) {
        if s != "all()" {
            let _ = write!(selector, " && {s}");
        }
    }
    // policyTypes unset: Ingress, plus Egress when there are egress rules
    // (Kubernetes' defaulting, which Calico's conversion repeats).
    let types = match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            let mut out = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let ty = match t.as_str() {
                    "Ingress" => PolicyType::Ingress,
                    "Egress" => PolicyType::Egress,
                    other => {
                        err(format!("spec.policyTypes[{i}]"), format!("{other:?} is not Ingress or Egress"));
                        continue;
                    }
                };
                if !out.contains(&ty) {
                    out.push(ty);
                }
            }
            out
        }
        _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec![PolicyType::Ingress, PolicyType::Egress],
        _ => vec![PolicyType::Ingress],
    };
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        let port_groups = ports(rule.ports.as_deref().unwrap_or(&[]), &field, Direction::Ingress, &mut err);
        let peers = peers(rule.from.as_deref(), &format!("{field}.from"), &mut err);
        ingress.extend(rules(&peers, &port_groups, |r, peer| r.source = peer));
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        let port_groups = ports(rule.ports.as_deref().unwrap_or(&[]), &field, Direction::Egress, &mut err);
        let peers = peers(rule.to.as_deref(), &format!("{field}.to"), &mut err);
        // The ports are the destination's; the peer is the destination too.
        egress.extend(rules(&peers, &port_groups, |r, peer| {
            let ports = r.destination.take().map(|d| d.ports).unwrap_or_default();
            r.destination = match peer {
                Some(mut p) => {
                    p.ports = ports;
                    Some(p)
                }
                None if ports.is_empty() => None,
                None => Some(EntityRuleSpec { ports, ..Default::default() }),
            };
        }));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PolicySpec {
        name: format!("knp.default.{name}"),
        namespace: Some(namespace),
        kind: Some(KIND.to_string()),
        tier: None,
        order: Some(ORDER),
        selector: Some(selector),
        namespace_selector: None,
        service_account_selector: None,
        types: Some(types),
        ingress,
        egress,
        staged_action: None,
    })
}

/// The peers of a rule (`from` or `to`): absent or empty is any peer (one
/// rule without an entity clause); each peer gives its own rule.
fn peers(list: Option<&[NetworkPolicyPeer]>, field: &str, err: &mut impl FnMut(String, String)) -> Vec<Option<EntityRuleSpec>> {
    match list {
        None | Some([]) => vec![None],
        Some(peers) => peers.iter().enumerate().map(|(j, p)| Some(peer(p, &format!("{field}[{j}]"), err))).collect(),
    }
}

/// One Allow rule per (peer x protocol), as Calico's conversion makes them:
/// the ports go in `destination.ports`, and `place` puts the peer on its side.
fn rules(
    peers: &[Option<EntityRuleSpec>],
    port_groups: &[(Option<String>, Vec<PortSpec>)],
    place: impl Fn(&mut RuleSpec, Option<EntityRuleSpec>),
) -> Vec<RuleSpec> {
    let mut out = Vec::new();
    for peer in peers {
        for (protocol, group) in port_groups {
            let mut r = RuleSpec::new(Action::Allow);
            r.protocol = protocol.clone().map(ProtocolSpec::Name);
            if !group.is_empty() {
                r.destination = Some(EntityRuleSpec { ports: group.clone(), ..Default::default() });
            }
            place(&mut r, peer.clone());
            out.push(r);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Ports grouped by protocol; no ports at all means any protocol and port.
fn ports(
    ports: &[NetworkPolicyPort],
    field: &str,
    direction: Direction,
    err: &mut impl FnMut(String, String),
) -> Vec<(Option<String>, Vec<PortSpec>)> {
    if ports.is_empty() {
        return vec![(None, Vec::new())];
    }
    let mut groups: Vec<(Option<String>, Vec<PortSpec>)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            err(format!("{field}.ports[{i}].protocol"), format!("{protocol:?} is not TCP, UDP or SCTP"));
            continue;
        }
        let port = match (&p.port, p.end_port) {
            (None, _) => None,
            (Some(IntOrString::Int(n)), None) => match u16::try_from(*n) {
                Ok(n) if n > 0 => Some(PortSpec::Number(n)),
                _ => {
                    err(format!("{field}.ports[{i}].port"), format!("{n} is not a port number (1-65535)"));
                    continue;
                }
            },
            (Some(IntOrString::Int(n)), Some(end)) => match (u16::try_from(*n), u16::try_from(end)) {
                (Ok(lo), Ok(hi)) if lo > 0 && lo <= hi => Some(PortSpec::Text(format!("{lo}:{hi}"))),
                _ => {
                    err(format!("{field}.ports[{i}].endPort"), format!("{n}..{end} is not a port range"));
                    continue;
                }
            },
            // A named port means each destination pod's own container port of
            // that name. On ingress the destination is the workload itself, whose
            // ports the filter knows; on egress it is a remote pod, whose ports the
            // config does not carry: rejected (read as "no port" it would match
            // nothing, and Calico would match the pods that do name it).
            (Some(IntOrString::String(name)), None) if direction == Direction::Egress => {
                err(
                    format!("{field}.ports[{i}].port"),
                    format!("named port {name:?} in an egress rule: Krites needs port numbers there (it does not know remote pods' container ports)"),
                );
                continue;
            }
            (Some(IntOrString::String(name)), None) => Some(PortSpec::Text(name.clone())),
            (Some(IntOrString::String(_)), Some(_)) => {
                err(format!("{field}.ports[{i}].endPort"), "endPort needs a numeric port".to_string());
                continue;
            }
        };
        let slot = match groups.iter().position(|(proto, _)| proto.as_deref() == Some(protocol.as_str())) {
            Some(slot) => slot,
            None => {
                groups.push((Some(protocol), Vec::new()));
                groups.len() - 1
            }
        };
        if let (Some(port), Some((_, list))) = (port, groups.get_mut(slot)) {
            list.push(port);
        }
    }
    groups
}

fn peer(p: &NetworkPolicyPeer, field: &str, err: &mut impl FnMut(String, String)) -> EntityRuleSpec {
    let mut e = EntityRuleSpec::default();
    if let Some(block) = &p.ip_block {
        e.nets = vec![block.cidr.clone()];
        e.not_nets = block.except.clone().unwrap_or_default();
    }
    if let Some(ps) = &p.pod_selector {
        let labels = label_selector(ps, &format!("{field}.podSelector"), err);
        e.selector = Some(match labels.as_deref() {
            Some("all()") | None => "projectcalico.org/orchestrator == 'k8s'".to_string(),
            Some(s) => format!("projectcalico.org/orchestrator == 'k8s' && {s}"),
        });
    }
    if let Some(ns) = &p.namespace_selector {
        // `{}` is every namespace; absent keeps the policy's own.
        e.namespace_selector = label_selector(ns, &format!("{field}.namespaceSelector"), err);
    }
    e
}

/// A Kubernetes label selector as a Calico selector (`all()` when empty).
fn label_selector(sel: &LabelSelector, field: &str, err: &mut impl FnMut(String, String)) -> Option<String> {
    let mut terms = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        if !valid_key(k) || !valid_value(v) {
            err(format!("{field}.matchLabels"), format!("{k}={v} is not a valid label"));
            return None;
        }
        terms.push(format!("{k} == '{v}'"));
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let (k, values) = (&expr.key, expr.values.clone().unwrap_or_default());
        if !valid_key(k) || values.iter().any(|v| !valid_value(v)) {
            err(format!("{field}.matchExpressions[{i}]"), format!("invalid key {k:?} or values {values:?}"));
            return None;
        }
        let set = values.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ");
        terms.push(match expr.operator.as_str() {
            "In" => format!("{k} in {{{set}}}"),
            "NotIn" => format!("{k} not in {{{set}}}"),
            "Exists" => format!("has({k})"),
            "DoesNotExist" => format!("!has({k})"),
            other => {
                err(format!("{field}.matchExpressions[{i}].operator"), format!("{other:?} is not In, NotIn, Exists or DoesNotExist"));
                return None;
            }
        });
    }
    Some(if terms.is_empty() { "all()".to_string() } else { terms.join(" && ") })
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 316 && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "ns"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn conversion_follows_calico() {
        let p = convert(&np(serde_json::json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {}}], "ports": [{"port": 5432}, {"port": 53, "protocol": "UDP"}]}]
        })))
        .unwrap();
        assert_eq!(p.name, "knp.default.p");
        assert_eq!(p.order, Some(1000.0));
        assert_eq!(p.selector.as_deref(), Some("projectcalico.org/orchestrator == 'k8s' && app == 'db'"));
        // 2 peers x 2 protocols, all Allow.
        assert_eq!(p.ingress.len(), 4);
        assert!(p.ingress.iter().all(|r| r.action == Action::Allow));
        let first = &p.ingress[0];
        assert_eq!(first.protocol, Some(ProtocolSpec::Name("TCP".into())));
        assert_eq!(first.source.as_ref().and_then(|s| s.selector.as_deref()), Some("projectcalico.org/orchestrator == 'k8s'"));
        assert_eq!(p.ingress[2].source.as_ref().and_then(|s| s.namespace_selector.as_deref()), Some("all()"));
        // No rules at all: selected pods are isolated (the tier's default denies).
        let isolated = convert(&np(serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]}))).unwrap();
        assert!(isolated.ingress.is_empty());
        assert_eq!(isolated.types, Some(vec![PolicyType::Ingress]));
        // Egress-only policies don't apply to ingress.
        let egress = convert(&np(serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"]}))).unwrap();
        assert_eq!(egress.types, Some(vec![PolicyType::Egress]));
    }

    #[test]
    fn invalid_fields_are_named() {
        let rows = [
            (serde_json::json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Maybe"}]}}), "spec.podSelector.matchExpressions[0].operator"),
            (serde_json::json!({"podSelector": {"matchLabels": {"a": "it's"}}}), "spec.podSelector.matchLabels"),
            (serde_json::json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}), "spec.ingress[0].ports[0].endPort"),
            (serde_json::json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}), "spec.ingress[0].ports[0].endPort"),
            (serde_json::json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}), "spec.ingress[0].ports[0].protocol"),
            (serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"bad key!": "x"}}}]}]}), "spec.ingress[0].from[0].podSelector.matchLabels"),
            (serde_json::json!({"podSelector": {}, "egress": [{"ports": [{"port": "http"}]}]}), "spec.egress[0].ports[0].port"),
            (serde_json::json!({"podSelector": {}, "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}]}]}), "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].operator"),
            (serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]}), "spec.policyTypes[1]"),
        ];
        for (spec, field) in rows {
            let errors = convert(&np(spec.clone())).unwrap_err();
            assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
            assert_eq!(errors[0].object, "NetworkPolicy.networking.k8s.io/ns/p");
            assert_eq!(errors[0].field, field, "{spec}");
        }
    }

    #[test]
    fn egress_follows_calico() {
        // reviews may call ratings on 9080 and DNS anywhere; each peer its own rule.
        let p = convert(&np(serde_json::json!({
            "podSelector": {"matchLabels": {"app": "reviews"}},
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "ratings"}}}, {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {}}],
                 "ports": [{"port": 9080}, {"port": 9000, "endPort": 9009}]},
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}
            ]
        })))
        .unwrap();
        // Absent policyTypes with egress rules: both types, as Kubernetes defaults them.
        assert_eq!(p.types, Some(vec![PolicyType::Ingress, PolicyType::Egress]));
        assert!(p.ingress.is_empty(), "no ingress rules: selected pods' ingress is isolated");
        assert_eq!(p.egress.len(), 2 + 2 + 1, "{:#?}", p.egress);
        assert!(p.egress.iter().all(|r| r.action == Action::Allow && r.source.is_none()));
        let ratings = p.egress[0].destination.as_ref().unwrap();
        assert_eq!(ratings.selector.as_deref(), Some("projectcalico.org/orchestrator == 'k8s' && app == 'ratings'"));
        assert_eq!(ratings.ports, [PortSpec::Number(9080), PortSpec::Text("9000:9009".into())]);
        assert_eq!(p.egress[0].protocol, Some(ProtocolSpec::Name("TCP".into())));
        let data = p.egress[1].destination.as_ref().unwrap();
        assert_eq!((data.namespace_selector.as_deref(), data.selector.as_deref()), (Some("team == 'data'"), Some("projectcalico.org/orchestrator == 'k8s'")));
        // `to` absent: any destination, the ports only; one rule per protocol.
        assert_eq!(p.egress[2].protocol, Some(ProtocolSpec::Name("UDP".into())));
        assert_eq!(p.egress[2].destination, Some(EntityRuleSpec { ports: vec![PortSpec::Number(53)], ..Default::default() }));
        assert_eq!(p.egress[3].protocol, Some(ProtocolSpec::Name("TCP".into())));
        // ipBlock: nets and notNets, no ports: any protocol.
        let block = p.egress[4].destination.as_ref().unwrap();
        assert_eq!((block.nets.as_slice(), block.not_nets.as_slice()), (&["10.0.0.0/8".to_string()][..], &["10.1.0.0/16".to_string()][..]));
        assert_eq!(p.egress[4].protocol, None);
        // An Egress policy without egress rules isolates (no rule: the tier's default denies).
        let isolated = convert(&np(serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"]}))).unwrap();
        assert_eq!((isolated.types, isolated.egress.len()), (Some(vec![PolicyType::Egress]), 0));
        // `to: []` and `{}` rule: allow everything.
        let open = convert(&np(serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": [{}]}))).unwrap();
        assert_eq!(open.egress, [RuleSpec::new(Action::Allow)]);
        // The engine reads the converted policy as Calico does.
        let config = krites_policy::PluginConfig { version: krites_policy::config::CONFIG_VERSION, policies: vec![p], ..Default::default() };
        let set = krites_policy::PolicySet::from_config(&config).unwrap();
        assert!(set.policies()[0].applies_to_egress && set.policies()[0].applies_to_ingress);
    }
}
