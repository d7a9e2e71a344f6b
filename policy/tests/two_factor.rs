//! Property tests (native only) of the two-factor rule on arbitrary endpoint
//! tables and policies: a certificate and a source address that disagree
//! never win what either alone would not, and agreement is what an identity
//! rule grants on. `properties.rs` checks a fixed policy; here the pods, their
//! addresses and the rules are all arbitrary.

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use krites_policy::config::Action;
use krites_policy::{ConnectionVerdict, Peer, PolicySet, RequestFacts, Verdict, Workload, WorkloadPolicy};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAMESPACES: [&str; 2] = ["prod", "dev"];
const ACCOUNTS: [&str; 4] = ["web", "api", "db", "tool"];
const APPS: [&str; 3] = ["web", "api", "db"];
/// Addresses 10.0.0.1..=10.0.0.12 may belong to pods; .13 and .14 never do.
const ADDRESSES: u8 = 14;

#[derive(Debug, Clone)]
struct Endpoint {
    namespace: &'static str,
    service_account: &'static str,
    app: &'static str,
}

/// Pods, and which of them owns each address (at most one, by construction).
#[derive(Debug, Clone)]
struct Table {
    endpoints: Vec<Endpoint>,
    owner: BTreeMap<u8, usize>,
}

impl Table {
    fn owner_of(&self, host: u8) -> Option<&Endpoint> {
        self.owner.get(&host).and_then(|&i| self.endpoints.get(i))
    }

    fn json(&self) -> Vec<Value> {
        (0..self.endpoints.len())
            .map(|i| {
                let e = &self.endpoints[i];
                let ips: Vec<String> = self.owner.iter().filter(|(_, &o)| o == i).map(|(h, _)| format!("10.0.0.{h}")).collect();
                json!({"namespace": e.namespace, "serviceAccount": e.service_account, "labels": {"app": e.app}, "ips": ips})
            })
            .collect()
    }
}

fn table() -> impl Strategy<Value = Table> {
    let endpoint = (0..NAMESPACES.len(), 0..ACCOUNTS.len(), 0..APPS.len())
        .prop_map(|(n, s, a)| Endpoint { namespace: NAMESPACES[n], service_account: ACCOUNTS[s], app: APPS[a] });
    (proptest::collection::vec(endpoint, 1..6), proptest::collection::vec(proptest::option::of(0..6usize), 12)).prop_map(
        |(endpoints, owners)| {
            let owner = (1u8..).zip(owners).filter_map(|(h, o)| o.map(|o| (h, o % endpoints.len()))).collect();
            Table { endpoints, owner }
        },
    )
}

/// A rule's source clause: identity clauses of each kind, an address clause, or none.
fn source() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        prop::sample::select(ACCOUNTS.to_vec()).prop_map(|sa| json!({"serviceAccounts": {"names": [sa]}})),
        Just(json!({"serviceAccounts": {"selector": "team == 'shop'"}})),
        prop::sample::select(APPS.to_vec()).prop_map(|app| json!({"selector": format!("app == '{app}'")})),
        prop::sample::select(APPS.to_vec()).prop_map(|app| json!({"notSelector": format!("app == '{app}'")})),
        prop::sample::select(NAMESPACES.to_vec()).prop_map(|ns| json!({"namespaceSelector": format!("env == '{ns}'")})),
        Just(json!({"namespaceSelector": "env == 'prod'", "serviceAccounts": {"names": ["api", "web"]}})),
        Just(json!({"selector": "projectcalico.org/serviceaccount == 'api'"})),
        // Labels pods inherit from their namespace and service account.
        prop::sample::select(NAMESPACES.to_vec()).prop_map(|ns| json!({"selector": format!("pcns.env == '{ns}'")})),
        Just(json!({"selector": "pcsa.team == 'shop' && app != 'db'"})),
        Just(json!({"notSelector": "pcns.projectcalico.org/name == 'prod' || has(pcsa.team)"})),
        Just(json!({"nets": ["10.0.0.0/29"]})),
        // Address clauses in several shapes, so the address-narrowed lists of
        // rules without identity clauses are exercised (and IPv6-only nets).
        Just(json!({"nets": ["10.0.0.0/30"]})),
        Just(json!({"nets": ["10.0.0.4/31", "10.0.0.9/32", "10.0.0.13"]})),
        Just(json!({"notNets": ["10.0.0.8/29"]})),
        Just(json!({"nets": ["0.0.0.0/0"]})),
        Just(json!({"nets": ["fd00::/8"]})),
        prop::sample::select(APPS.to_vec()).prop_map(|app| json!({"nets": ["10.0.0.0/28"], "selector": format!("app == '{app}'")})),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    let action = prop::sample::select(vec![Action::Allow, Action::Deny, Action::Log, Action::Pass]);
    (action, source(), any::<bool>()).prop_map(|(action, source, http)| {
        let mut r = json!({"action": action, "source": source});
        if source.is_null() {
            r = json!({"action": action});
        }
        if http && action == Action::Allow {
            r["http"] = json!({"methods": ["GET"]});
        }
        r
    })
}

/// Policies in two tiers, all selecting the workload under test.
fn policies() -> impl Strategy<Value = (Vec<Value>, bool)> {
    let policy = (any::<bool>(), proptest::collection::vec(rule(), 1..5));
    (proptest::collection::vec(policy, 1..5), any::<bool>()).prop_map(|(ps, security_passes)| {
        let ps = ps
            .into_iter()
            .enumerate()
            .map(|(i, (security, ingress))| {
                let mut p = json!({"name": format!("p{i}"), "selector": "app == 'target'", "ingress": ingress});
                if security {
                    p["tier"] = json!("security");
                }
                p
            })
            .collect();
        (ps, security_passes)
    })
}

fn compile(table: &Table, policies: &[Value], security_passes: bool) -> WorkloadPolicy {
    let config = json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100, "defaultAction": if security_passes { "Pass" } else { "Deny" }}],
        "policies": policies,
        "endpoints": table.json(),
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}],
        "serviceAccounts": [{"namespace": "prod", "name": "api", "labels": {"team": "shop"}}, {"namespace": "dev", "name": "web", "labels": {"team": "shop"}}]
    });
    let set = PolicySet::from_json(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let target = Workload {
        namespace: "prod".into(),
        service_account: "target".into(),
        labels: [("app".to_string(), "target".to_string())].into(),
        ports: Default::default(),
    };
    WorkloadPolicy::new(Arc::new(set), &target)
}

#[derive(Debug, Clone)]
enum Cert {
    Plaintext,
    Spiffe(&'static str, &'static str),
    NotSpiffe,
    NoSan,
}

fn cert() -> impl Strategy<Value = Cert> {
    prop_oneof![
        1 => Just(Cert::Plaintext),
        3 => (prop::sample::select(NAMESPACES.to_vec()), prop::sample::select(ACCOUNTS.to_vec())).prop_map(|(n, s)| Cert::Spiffe(n, s)),
        1 => Just(Cert::NotSpiffe),
        1 => Just(Cert::NoSan),
    ]
}

struct Request {
    ip: IpAddr,
    san: Option<Option<String>>,
}

impl Request {
    fn new(host: u8, mapped: bool, cert: &Cert) -> Request {
        let v4 = Ipv4Addr::new(10, 0, 0, host);
        let ip = if mapped { IpAddr::V6(v4.to_ipv6_mapped()) } else { IpAddr::V4(v4) };
        let san = match cert {
            Cert::Plaintext => None,
            Cert::Spiffe(ns, sa) => Some(Some(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))),
            Cert::NotSpiffe => Some(Some("https://example.com/workload".to_string())),
            Cert::NoSan => Some(None),
        };
        Request { ip, san }
    }

    fn facts(&self) -> RequestFacts<'_> {
        let peer = match &self.san {
            None => Peer::Plaintext,
            Some(san) => Peer::Mtls { uri_san: san.as_deref() },
        };
        RequestFacts { source_port: Some(40000), destination_port: Some(8080), ..RequestFacts::http(self.ip, peer, "GET", "/") }
    }
}

fn allowed(policy: &WorkloadPolicy, r: &Request) -> bool {
    let f = r.facts();
    let d = policy.decide(&f);
    let u = policy.decide_unindexed(&f);
    assert_eq!((d.verdict, d.reason, d.decided_by().to_string()), (u.verdict, u.reason, u.decided_by().to_string()));
    d.allowed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// A certificate that disagrees with the owner of the source address (or
    /// comes from an address no pod owns, or carries no SPIFFE id):
    /// - is never let in by an Allow rule with a source identity clause
    ///   (an unknown address satisfies only `notSelector`);
    /// - never gets further than the address alone would: if it is allowed,
    ///   plaintext from the same address is, and so is the owner's own
    ///   certificate from it.
    #[test]
    fn disagreeing_factors_never_grant(
        table in table(),
        (policies, security_passes) in policies(),
        host in 1..=ADDRESSES,
        mapped in any::<bool>(),
        cert in cert(),
    ) {
        let policy = compile(&table, &policies, security_passes);
        let request = Request::new(host, mapped, &cert);
        let facts = request.facts();
        let d = policy.decide(&facts);
        let u = policy.decide_unindexed(&facts);
        prop_assert_eq!((d.verdict, d.reason, d.decided_by().to_string()), (u.verdict, u.reason, u.decided_by().to_string()));

        let owner = table.owner_of(host);
        let agree = matches!((&cert, owner), (Cert::Spiffe(ns, sa), Some(o)) if *ns == o.namespace && *sa == o.service_account);
        if matches!(cert, Cert::Plaintext) || agree || !d.allowed() {
            return Ok(());
        }
        if let Some(rule) = d.rule {
            let identity = &rule.source.identity;
            if owner.is_none() && matches!(cert, Cert::Spiffe(..)) {
                prop_assert!(identity.matches_unknown(), "{} let a certificate from an unknown address in on identity: {}", rule.id, d);
            } else {
                prop_assert!(identity.is_empty(), "{} let disagreeing factors in on identity: {}", rule.id, d);
            }
        }
        let plaintext = Request::new(host, mapped, &Cert::Plaintext);
        prop_assert!(allowed(&policy, &plaintext), "{} allowed, but plaintext from 10.0.0.{} is not: {:?}", d, host, policies);
        if let Some(o) = owner {
            let own = Request::new(host, mapped, &Cert::Spiffe(o.namespace, o.service_account));
            prop_assert!(allowed(&policy, &own), "{} allowed, but the owner's own certificate is not: {:?}", d, policies);
        }
    }

    /// What the NETWORK role does with a connection bounds every request on it. The
    /// generated `http` clauses all read `methods: [GET]` with no path, so a GET request is
    /// exactly the "some HTTP request" reading: a connection is "HTTP decides" precisely when
    /// it is denied as such and a GET on it is allowed; "Deny" means nothing on it is allowed.
    #[test]
    fn connection_verdicts_bound_every_request(
        table in table(),
        (policies, security_passes) in policies(),
        host in 1..=ADDRESSES,
        mapped in any::<bool>(),
        cert in cert(),
    ) {
        let policy = compile(&table, &policies, security_passes);
        let request = Request::new(host, mapped, &cert);
        let http = request.facts();
        let connection = RequestFacts { method: None, path: None, ..http };
        let as_connection = policy.decide(&connection).allowed();
        let get = policy.decide(&http).allowed();
        let post = policy.decide(&RequestFacts { method: Some("POST"), ..http }).allowed();
        match policy.decide_connection(&connection) {
            ConnectionVerdict::Allow(d) => {
                prop_assert!(d.allowed() && as_connection, "{d}");
                prop_assert!(get && post, "a connection allowed as such allows its requests too: {d}");
            }
            ConnectionVerdict::HttpDecides(d) => prop_assert!(!d.allowed() && !as_connection && get, "{d}"),
            ConnectionVerdict::Deny(d) => prop_assert!(!d.allowed() && !as_connection && !get && !post, "{d}"),
        }
    }

    /// With one rule allowing a service account: a pod of that account with
    /// its own certificate is allowed (from its IPv4 or IPv4-mapped address),
    /// and nothing else that presents a certificate is.
    #[test]
    fn agreeing_factors_are_what_a_service_account_rule_grants(
        table in table(),
        named in prop::sample::select(ACCOUNTS.to_vec()),
        host in 1..=ADDRESSES,
        mapped in any::<bool>(),
        cert in cert(),
    ) {
        let policies = [json!({"name": "sa", "selector": "app == 'target'", "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": [named]}}}]})];
        let policy = compile(&table, &policies, false);
        let owner = table.owner_of(host);
        let got = allowed(&policy, &Request::new(host, mapped, &cert));
        let want = match (&cert, owner) {
            (Cert::Plaintext, Some(o)) => o.service_account == named,
            (Cert::Spiffe(ns, sa), Some(o)) => *ns == o.namespace && *sa == o.service_account && *sa == named,
            _ => false,
        };
        prop_assert_eq!(got, want, "10.0.0.{} owned by {:?}, {:?}, rule allows {}", host, owner, cert, named);

        // Every pod of the named account, with its own certificate.
        for (&h, &i) in &table.owner {
            let e = &table.endpoints[i];
            if e.service_account == named {
                prop_assert!(allowed(&policy, &Request::new(h, mapped, &Cert::Spiffe(e.namespace, e.service_account))));
            }
        }
    }
}

/// Found by `disagreeing_factors_never_grant`: a Pass rule with a source
/// identity clause was skipped when the factors disagreed, so a stolen
/// certificate let its holder past the Pass, into the rest of the tier,
/// instead of on to the next tier that would have denied it.
#[test]
fn a_stolen_certificate_does_not_skip_a_pass() {
    let table = Table {
        endpoints: vec![
            Endpoint { namespace: "prod", service_account: "web", app: "web" },
            Endpoint { namespace: "prod", service_account: "api", app: "api" },
        ],
        owner: [(1, 0), (2, 1)].into(),
    };
    let policies = [
        // Security tier: web traffic goes on to the default tier, the rest is allowed.
        json!({"name": "guard", "tier": "security", "selector": "app == 'target'", "ingress": [
            {"action": "Pass", "source": {"selector": "app == 'web'"}},
            {"action": "Allow"}
        ]}),
        // Default tier: only api.
        json!({"name": "only-api", "selector": "app == 'target'", "ingress": [
            {"action": "Allow", "source": {"serviceAccounts": {"names": ["api"]}}}
        ]}),
    ];
    let policy = compile(&table, &policies, false);
    let web_own = Request::new(1, false, &Cert::Spiffe("prod", "web"));
    let web_plain = Request::new(1, false, &Cert::Plaintext);
    let web_stolen = Request::new(1, false, &Cert::Spiffe("prod", "api"));
    let web_no_id = Request::new(1, false, &Cert::NotSpiffe);
    let api_own = Request::new(2, false, &Cert::Spiffe("prod", "api"));
    let outside = Request::new(13, false, &Cert::Plaintext);
    assert!(!allowed(&policy, &web_own));
    assert!(!allowed(&policy, &web_plain));
    assert!(!allowed(&policy, &web_stolen), "{}", policy.decide(&web_stolen.facts()));
    assert!(!allowed(&policy, &web_no_id), "{}", policy.decide(&web_no_id.facts()));
    assert!(allowed(&policy, &api_own));
    assert!(allowed(&policy, &outside));
    let d = policy.decide(&web_stolen.facts());
    assert_eq!(d.decided_by().to_string(), "tier/default", "{d}");
    assert_eq!(d.verdict, Verdict::Deny);
}

/// Where both factors read a Pass rule the same way, it is simply taken: a
/// certificate from an address the config leaves out (a gateway, say) still
/// passes a "not quarantined" rule on to the next tier.
#[test]
fn a_pass_both_factors_agree_on_is_taken() {
    let table = Table { endpoints: vec![Endpoint { namespace: "prod", service_account: "web", app: "web" }], owner: [(1, 0)].into() };
    let policies = [
        json!({"name": "guard", "tier": "security", "selector": "app == 'target'", "ingress": [
            {"action": "Pass", "source": {"notSelector": "app == 'db'"}},
            {"action": "Deny"}
        ]}),
        json!({"name": "open", "selector": "app == 'target'", "ingress": [{"action": "Allow"}]}),
    ];
    let policy = compile(&table, &policies, false);
    for request in [
        Request::new(13, false, &Cert::Spiffe("istio-system", "gateway")),
        Request::new(13, true, &Cert::Plaintext),
        Request::new(1, false, &Cert::Spiffe("prod", "api")),
        Request::new(1, false, &Cert::NotSpiffe),
    ] {
        let d = policy.decide(&request.facts());
        assert_eq!(d.decided_by().to_string(), "default/open/ingress[0]", "{d}");
        assert!(allowed(&policy, &request));
    }
}
