//! Calico selectors: arbitrary text up to the first NUL is the selector; the
//! bytes after it shape the label sets it is evaluated on.
//!
//! When it parses: its canonical form (Display) re-parses to an equal selector
//! and is stable; evaluation never panics; and the engine's inverted label
//! index (selectors as set algebra over endpoint groups) agrees with evaluating
//! the selector on each pod's labels, through both `decide` and
//! `decide_unindexed`.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use krites_fuzz::check_decision;
use krites_policy::config::{Action, EndpointSpec, EntityRuleSpec, PolicySpec, RuleSpec};
use krites_policy::model::universe::pod_labels;
use krites_policy::selector::Selector;
use krites_policy::{PluginConfig, PolicySet, RequestFacts, Verdict, Workload, WorkloadPolicy};
use libfuzzer_sys::fuzz_target;

/// Keys and literal values a selector mentions, for label sets it can match.
fn vocabulary(sel: &Selector, keys: &mut Vec<String>, values: &mut Vec<String>) {
    match sel {
        Selector::All | Selector::Global => {}
        Selector::Has(k) => keys.push(k.clone()),
        Selector::Eq(k, v)
        | Selector::Ne(k, v)
        | Selector::Contains(k, v)
        | Selector::StartsWith(k, v)
        | Selector::EndsWith(k, v) => {
            keys.push(k.clone());
            values.push(v.clone());
        }
        Selector::In(k, set) | Selector::NotIn(k, set) => {
            keys.push(k.clone());
            values.extend(set.iter().cloned());
        }
        Selector::Not(inner) => vocabulary(inner, keys, values),
        Selector::And(parts) | Selector::Or(parts) => {
            for p in parts {
                vocabulary(p, keys, values);
            }
        }
    }
}

/// Up to four label sets over the selector's own keys: each byte picks absent,
/// one of its literals, a literal with text around it, or the empty string.
fn label_sets(keys: &[String], values: &[String], shape: &[u8]) -> Vec<BTreeMap<String, String>> {
    let mut bytes = shape.iter().copied().chain(std::iter::repeat(0x5a));
    let mut sets = Vec::new();
    for _ in 0..4 {
        let mut labels = BTreeMap::new();
        for key in keys.iter().take(16) {
            let b = bytes.next().unwrap_or(0);
            let value = |i: u8| values.get(usize::from(i) % values.len().max(1)).cloned().unwrap_or_default();
            match b % 6 {
                0 => continue,
                1 | 2 => labels.insert(key.clone(), value(b / 6)),
                3 => labels.insert(key.clone(), format!("x{}", value(b / 6))),
                4 => labels.insert(key.clone(), format!("{}x", value(b / 6))),
                _ => labels.insert(key.clone(), String::new()),
            };
        }
        sets.push(labels);
    }
    sets
}

fuzz_target!(|data: &[u8]| {
    let (text, shape) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(sel) = Selector::parse(text) else { return };

    // Canonical form: re-parses to the same selector, and is a fixed point.
    let canonical = sel.to_string();
    let again = Selector::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} of {text:?} does not parse: {e}"));
    assert_eq!(again, sel, "canonical form {canonical:?} of {text:?} parses to another selector");
    assert_eq!(again.to_string(), canonical, "canonical form of {text:?} is not stable");

    let mut keys = Vec::new();
    let mut values = Vec::new();
    vocabulary(&sel, &mut keys, &mut values);
    keys.sort();
    keys.dedup();
    let sets = label_sets(&keys, &values, shape);
    for labels in &sets {
        let m = sel.matches(labels);
        // Negation by parity, as Calico collapses `!!`.
        assert_eq!(Selector::Not(Box::new(sel.clone())).matches(labels), !m);
    }

    // The label index against direct evaluation, through the engine: pods
    // with those labels, one policy allowing sources the selector picks.
    if sel.uses_global() || text.trim_matches([' ', '\t']).is_empty() {
        return;
    }
    let namespaces = ["prod", "dev"];
    let endpoints: Vec<EndpointSpec> = (0u8..)
        .zip(&sets)
        .map(|(i, labels)| EndpointSpec {
            namespace: namespaces[usize::from(i) % 2].to_string(),
            service_account: format!("sa{}", i % 3),
            labels: labels.clone(),
            ips: vec![format!("10.0.0.{}", i + 1)],
        })
        .collect();
    for negate in [false, true] {
        let mut source = EntityRuleSpec::default();
        if negate {
            source.not_selector = Some(text.to_string());
        } else {
            source.selector = Some(text.to_string());
        }
        let config = PluginConfig {
            version: 1,
            policies: vec![PolicySpec {
                name: "p".into(),
                ingress: vec![RuleSpec { source: Some(source), ..RuleSpec::new(Action::Allow) }],
                ..Default::default()
            }],
            endpoints: endpoints.clone(),
            ..Default::default()
        };
        let set = match PolicySet::from_config(&config) {
            Ok(set) => Arc::new(set),
            Err(e) => panic!("{text:?} parses but the config using it does not compile: {e}"),
        };
        let policy = WorkloadPolicy::new(set, &Workload { namespace: "prod".into(), service_account: "db".into(), ..Default::default() });
        for (i, ep) in (1u8..).zip(&endpoints) {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
            let facts = RequestFacts::http(ip, krites_policy::Peer::Plaintext, "GET", "/");
            let (verdict, _, _) = check_decision(&policy, &facts);
            let matches = sel.matches(&pod_labels(&ep.namespace, &ep.service_account, &ep.labels));
            let want = if matches != negate { Verdict::Allow } else { Verdict::Deny };
            assert_eq!(verdict, want, "{text:?} (negated: {negate}) on {:?}", ep.labels);
        }
        // An unknown address satisfies notSelector and not selector.
        let facts = RequestFacts::http(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), krites_policy::Peer::Plaintext, "GET", "/");
        let (verdict, _, _) = check_decision(&policy, &facts);
        assert_eq!(verdict == Verdict::Allow, negate, "{text:?} from an unknown address (negated: {negate})");
    }
});
