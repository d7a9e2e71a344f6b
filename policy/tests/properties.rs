//! Property tests (native only): path normalisation, and the decision engine
//! on arbitrary requests against a fixed policy set.

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use krites_policy::config::Action;
use krites_policy::engine::IdentityCheck;
use krites_policy::path::{has_prefix, normalize};
use krites_policy::{Peer, PolicySet, RequestFacts, Workload, WorkloadPolicy};
use proptest::prelude::*;

/// Path-ish strings: the characters that matter to normalisation, escapes included.
fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("\\\\".to_string()),
        Just(";x".to_string()),
        Just("?q".to_string()),
        Just("#f".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("%25".to_string()),
        Just("%3f".to_string()),
        Just("%23".to_string()),
        Just("%41".to_string()),
        Just("%c3%a9".to_string()),
        Just("%".to_string()),
        "[a-z]{1,4}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #[test]
    fn normalisation_is_idempotent_and_leaves_no_dot_segments(raw in raw_path()) {
        if let Ok(n) = normalize(&raw) {
            let again = normalize(&n);
            prop_assert_eq!(again.as_deref(), Ok(n.as_ref()), "not idempotent for {:?}", raw);
            prop_assert!(n.starts_with('/'));
            prop_assert!(n == "/" || !n.ends_with('/'));
            for seg in n.split('/').skip(1) {
                prop_assert!(seg != "." && seg != ".." && (n == "/" || !seg.is_empty()), "{:?} -> {:?}", raw, n);
            }
            prop_assert!(!n.contains('\\') && !n.contains('?') && !n.contains('#') && !n.contains(';'));
            prop_assert!(has_prefix(&n, "/"));
        }
    }

    /// Any prefix that matches lies on a segment boundary of the path.
    #[test]
    fn prefixes_match_whole_segments(path in raw_path(), prefix in raw_path()) {
        if let (Ok(p), Ok(pre)) = (normalize(&path), normalize(&prefix)) {
            if has_prefix(&p, &pre) {
                let boundary = format!("{}/", pre);
                prop_assert!(pre == "/" || p == pre || p.starts_with(&boundary));
            }
        }
    }
}

/// Segments built from dot and separator spellings: literal, percent-encoded
/// in either case, double-encoded, overlong UTF-8, with `\\` and `;params`.
fn dotty_segments() -> impl Strategy<Value = Vec<String>> {
    let piece = prop::sample::select(vec![
        ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%252e", "%252E", "%25", "%c0%ae", "%e0%80%ae", "\\", ";x", ";",
        "/", "%2f", "%5c", "a", "b", "%61",
    ]);
    proptest::collection::vec(proptest::collection::vec(piece, 1..4).prop_map(|p| p.concat()), 0..8)
}

/// Percent-decodes every valid escape, as a server that decodes again would.
fn decode_all(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if let (b'%', Some(h), Some(l)) = (c, b.get(i + 1).and_then(|&x| hex(x)), b.get(i + 2).and_then(|&x| hex(x))) {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Dot segments however spelled: the canonical form is a fixed point that
    /// starts with `/` and has no `.` or `..` segment, not even once a server
    /// percent-decodes it again; an encoded dot (or a double-encoded one, or
    /// an overlong one) is refused, never decoded into a `..`; and under
    /// `/jail/` only a literal `..` can leave the jail.
    #[test]
    fn decoded_dots_never_escape(segments in dotty_segments()) {
        let suffix = segments.join("/");
        let raw = format!("/jail/{suffix}");
        let lower = raw.to_ascii_lowercase();
        match normalize(&raw) {
            Err(_) => {}
            Ok(n) => {
                let twice = normalize(&n);
                prop_assert_eq!(twice.as_deref(), Ok(n.as_ref()), "not idempotent for {:?}", raw);
                prop_assert!(n.starts_with('/'), "{:?} -> {:?}", raw, n);
                let again = decode_all(&n);
                for seg in again.split(|&b| b == b'/' || b == b'\\') {
                    let seg = seg.split(|&b| b == b';').next().unwrap_or_default();
                    prop_assert!(seg != b".." && seg != b".", "{:?} -> {:?} decodes to a dot segment", raw, n);
                }
                prop_assert!(!lower.contains("%2e") && !lower.contains("%252e") && !lower.contains("%c0%ae") && !lower.contains("%e0%80%ae"),
                    "{:?} has an encoded dot but normalised to {:?}", raw, n);
                if !suffix.contains("..") {
                    prop_assert!(has_prefix(&n, "/jail"), "{:?} left /jail: {:?}", raw, n);
                }
            }
        }
    }
}

fn policy() -> WorkloadPolicy {
    let config = serde_json::json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100, "defaultAction": "Pass"}],
        "policies": [
            {"name": "guard", "tier": "security", "selector": "app == 'db'", "ingress": [
                {"action": "Deny", "source": {"serviceAccounts": {"names": ["evil"]}}},
                {"action": "Log", "source": {"notSelector": "app == 'web'"}},
                {"action": "Pass", "source": {"namespaceSelector": "env == 'dev'"}}
            ]},
            {"name": "db", "selector": "app == 'db'", "ingress": [
                {"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}, "http": {"methods": ["GET"], "paths": [{"prefix": "/api"}]}},
                {"action": "Allow", "source": {"selector": "app == 'api'"}},
                {"action": "Deny", "source": {"nets": ["10.9.0.0/16"]}},
                {"action": "Allow", "http": {"paths": [{"exact": "/healthz"}]}}
            ]}
        ],
        "endpoints": [
            {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.0.0.1", "10.0.0.2"]},
            {"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api"}, "ips": ["10.0.0.3"]},
            {"namespace": "dev", "serviceAccount": "evil", "labels": {"app": "web"}, "ips": ["10.0.0.4"]},
            {"namespace": "dev", "serviceAccount": "tool", "labels": {"app": "tool"}, "ips": ["10.0.0.5"]}
        ],
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}]
    });
    let set = PolicySet::from_json(config.to_string().as_bytes()).unwrap();
    WorkloadPolicy::new(Arc::new(set), &Workload { namespace: "prod".into(), service_account: "db".into(), labels: [("app".to_string(), "db".to_string())].into(), ports: Default::default() })
}

fn source_ip() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        4 => (1u8..=6).prop_map(|d| Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)))),
        1 => any::<[u8; 2]>().prop_map(|[c, d]| Some(IpAddr::V4(Ipv4Addr::new(10, 9, c, d)))),
        1 => Just(None),
    ]
}

fn principal() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (prop::sample::select(vec!["prod", "dev", "x"]), prop::sample::select(vec!["web", "api", "evil", "tool", "db"]))
            .prop_map(|(ns, sa)| Some(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))),
        Just(Some("https://not-spiffe".to_string())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The index never changes an answer, and when the certificate and the
    /// address disagree no identity rule that grants decides the request.
    #[test]
    fn decisions_hold_for_arbitrary_requests(
        ip in source_ip(),
        cert in principal(),
        mtls in any::<bool>(),
        method in prop::sample::select(vec!["GET", "POST", "get"]),
        path in raw_path(),
    ) {
        let policy = policy();
        let facts = RequestFacts {
            source_ip: ip,
            source_port: Some(5000),
            destination_ip: None,
            destination_port: Some(8080),
            peer: if mtls { Peer::Mtls { uri_san: cert.as_deref() } } else { Peer::Plaintext },
            method: Some(method),
            path: Some(&path),
        };
        let d = policy.decide(&facts);
        let u = policy.decide_unindexed(&facts);
        prop_assert_eq!((d.verdict, d.reason, d.decided_by().to_string()), (u.verdict, u.reason, u.decided_by().to_string()));
        if let Some(rule) = d.rule {
            let grants = matches!(rule.action, Action::Allow | Action::Pass);
            if grants && d.identity.is_conflict() {
                prop_assert!(rule.source.identity.is_empty(), "{} granted on identity despite {:?}", rule.id, d.identity);
            }
            if grants && matches!(d.identity, IdentityCheck::UnknownAddress { .. }) {
                prop_assert!(rule.source.identity.matches_unknown(), "{} granted to an unknown address", rule.id);
            }
        }
    }
}
