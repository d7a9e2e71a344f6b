//! Writes the `decide` target's seed corpus: one input per kind of request
//! worth starting from (each identity case, IPv4-mapped and IPv6 sources,
//! each way a decision is reached, tricky paths), found by sampling inputs
//! until one resolves to that kind. Deterministic.
//!
//! `cargo run --release --example decide_seeds -- corpus/decide` (from fuzz/).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use krites_fuzz::decide::{resolve, targets, Input};
use krites_fuzz::OwnedFacts;
use krites_policy::engine::IdentityCheck;
use krites_policy::{Decision, Reason};

type Want = fn(&str, &str, &OwnedFacts, &Decision<'_, '_>) -> bool;

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "corpus/decide".to_string());
    std::fs::create_dir_all(&out).unwrap();
    let wants: Vec<(&str, Want)> = vec![
        ("yaobank-verified-allowed", |t, _, _, d| t == "yaobank" && matches!(d.identity, IdentityCheck::Verified { .. }) && d.reason == Reason::AllowRule),
        ("yaobank-verified-denied", |t, _, _, d| t == "yaobank" && matches!(d.identity, IdentityCheck::Verified { .. }) && d.reason == Reason::TierDefaultDeny),
        ("yaobank-stolen-cert", |t, _, _, d| t == "yaobank" && matches!(d.identity, IdentityCheck::Mismatch { .. })),
        ("yaobank-cert-unknown-address", |t, _, _, d| t == "yaobank" && matches!(d.identity, IdentityCheck::UnknownAddress { .. })),
        ("yaobank-no-spiffe-id", |t, _, f, d| t == "yaobank" && matches!(d.identity, IdentityCheck::NoSpiffeId { .. }) && f.uri_san.as_ref().is_some_and(Option::is_some)),
        ("yaobank-mtls-no-san", |t, _, f, _| t == "yaobank" && f.uri_san == Some(None)),
        ("yaobank-plaintext-pod", |t, _, _, d| t == "yaobank" && matches!(d.identity, IdentityCheck::Address { owner: Some(_) })),
        ("yaobank-plaintext-unknown", |t, _, _, d| t == "yaobank" && matches!(d.identity, IdentityCheck::Address { owner: None })),
        ("yaobank-mapped-v6-verified", |t, _, f, d| {
            t == "yaobank" && matches!(f.source_ip, Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some()) && matches!(d.identity, IdentityCheck::Verified { .. })
        }),
        ("yaobank-no-source-address", |t, _, f, _| t == "yaobank" && f.source_ip.is_none()),
        ("yaobank-customer-get", |t, w, f, d| t == "yaobank" && w == "default/customer" && f.method.as_deref() == Some("GET") && d.reason == Reason::AllowRule),
        ("yaobank-customer-post", |t, w, f, d| t == "yaobank" && w == "default/customer" && f.method.as_deref() == Some("POST") && d.reason == Reason::TierDefaultDeny),
        ("yaobank-no-policy-selects", |t, _, _, d| t == "yaobank" && d.reason == Reason::NoPolicySelects),
        ("yaobank-non-http", |t, _, f, _| t == "yaobank" && f.method.is_none() && f.path.is_none()),
        ("rules100-verified-allowed", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::Verified { .. }) && d.reason == Reason::AllowRule),
        ("rules100-verified-denied-by-rule", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::Verified { .. }) && d.reason == Reason::DenyRule),
        ("rules100-tier-default", |t, _, _, d| t == "rules100" && d.reason == Reason::TierDefaultDeny),
        ("rules100-all-tiers-passed", |t, _, _, d| t == "rules100" && d.reason == Reason::AllTiersPassed),
        ("rules100-stolen-cert", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::Mismatch { .. })),
        ("rules100-cert-unknown-address", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::UnknownAddress { .. })),
        ("rules100-no-spiffe-id", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::NoSpiffeId { .. })),
        ("rules100-plaintext-pod", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::Address { owner: Some(_) })),
        ("rules100-plaintext-mapped", |t, _, f, d| {
            t == "rules100" && matches!(f.source_ip, Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some()) && matches!(d.identity, IdentityCheck::Address { owner: Some(_) })
        }),
        ("rules100-v6-source", |t, _, f, _| t == "rules100" && matches!(f.source_ip, Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none())),
        ("rules100-net-rule-address", |t, _, _, d| t == "rules100" && d.rule.is_some_and(|r| r.source.nets.is_some())),
        ("rules100-http-rule", |t, _, _, d| t == "rules100" && d.rule.is_some_and(|r| r.http.is_some())),
        ("rules100-sa-rule", |t, _, _, d| t == "rules100" && d.rule.is_some_and(|r| r.source.identity.service_accounts.is_some())),
        ("rules100-selector-rule", |t, _, _, d| t == "rules100" && d.rule.is_some_and(|r| r.source.identity.selector.is_some())),
        ("rules100-verified-http-allowed", |t, _, _, d| t == "rules100" && matches!(d.identity, IdentityCheck::Verified { .. }) && d.rule.is_some_and(|r| r.http.is_some())),
        ("rules100-path-tricks", |t, _, f, _| t == "rules100" && f.path.as_deref().is_some_and(|p| p.starts_with("/api") && p.contains("%2") && p.contains(".."))),
        ("path-dotdot", |_, _, f, _| f.path.as_deref().is_some_and(|p| p.contains("/..") && p.starts_with('/'))),
        ("path-percent", |_, _, f, _| f.path.as_deref().is_some_and(|p| p.contains('%') && p.starts_with('/'))),
        ("path-query", |_, _, f, _| f.path.as_deref().is_some_and(|p| p.contains('?') && p.starts_with('/'))),
        ("method-lowercase", |_, _, f, _| f.method.as_deref() == Some("get")),
        ("method-star", |_, _, f, _| f.method.as_deref() == Some("*")),
        ("spiffe-other-trust-domain", |_, _, f, _| f.uri_san.as_ref().and_then(|s| s.as_deref()).is_some_and(|s| s.starts_with("spiffe://other.domain/"))),
        ("spiffe-trailing-slash", |_, _, f, _| f.uri_san.as_ref().and_then(|s| s.as_deref()).is_some_and(|s| s.starts_with("spiffe://") && s.ends_with('/'))),
    ];
    let mut state = 0x6b72_6974_6573_0001u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let names: Vec<&str> = targets().iter().map(|t| t.name).collect();
    let mut found = 0;
    for (name, want) in &wants {
        let mut hit = None;
        for _ in 0..2_000_000 {
            let len = 16 + (next() % 80) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) else { continue };
            let Some((target, w, facts)) = resolve(&input) else { continue };
            let Some(policy) = target.policies.get(w) else { continue };
            let workload = target.workloads.get(w).map(String::as_str).unwrap_or("");
            let d = policy.decide(&facts.facts());
            if want(target.name, workload, &facts, &d) {
                hit = Some((bytes, target.name, workload.to_string(), facts));
                break;
            }
        }
        match hit {
            Some((bytes, t, w, facts)) => {
                std::fs::write(format!("{out}/{name}"), &bytes).unwrap();
                found += 1;
                println!("{name}: {t} {w} {facts:?}");
            }
            None => println!("{name}: not found"),
        }
    }
    println!("{found} of {} seeds written to {out} (targets: {names:?})", wants.len());
}
