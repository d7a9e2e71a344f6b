//! Config validation, table-driven: every rejected config names the object, the
//! field and the problem; serde errors name the line and column; one bad object
//! never hides another's errors; valid configs compile with a stable revision.
// Helpers panic on failure like the tests that call them; under wasm-bindgen-test
// clippy does not see `#[test]`, so mark the whole file as test code.
#![cfg(test)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use krites_policy::engine::Workload;
use krites_policy::{ConfigError, ConfigErrors, PluginConfig, PolicySet};
use serde_json::{json, Value};

/// Compiles config JSON text, as the filter does in `on_configure`.
fn from_text(text: &str) -> Result<PolicySet, ConfigErrors> {
    PolicySet::from_json(text.as_bytes())
}

/// Compiles a JSON value through every entry point and checks they agree.
fn compile(config: &Value) -> Result<PolicySet, ConfigErrors> {
    let text = config.to_string();
    let via_json = from_text(&text);
    // The filter's entry point, which drops the text before compiling, says the same.
    let via_owned = PolicySet::from_json_owned(text.clone().into_bytes());
    assert_eq!(via_json.as_ref().err(), via_owned.as_ref().err(), "from_json and from_json_owned disagree for {text}");
    assert_eq!(via_json.as_ref().ok().map(PolicySet::revision), via_owned.as_ref().ok().map(PolicySet::revision));
    // It lets go of each policy's spec as it compiles it: the same policies, rules and tiers.
    let shape = |set: &PolicySet| {
        let ids = |rules: &krites_policy::model::Rules| rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let tiers = set.tiers().iter().map(|t| (t.name.clone(), t.default_action)).collect::<Vec<_>>();
        (set.policies().iter().map(|p| p.id.clone()).collect::<Vec<_>>(), ids(set.rules()), tiers)
    };
    assert_eq!(via_json.as_ref().ok().map(shape), via_owned.as_ref().ok().map(shape), "from_json and from_json_owned compile differently: {text}");
    // The filter compiles for its workload: every policy is still validated,
    // whether or not it selects the workload.
    for workload in row_workloads() {
        let via_workload = PolicySet::for_workload(text.clone().into_bytes(), &workload);
        assert_eq!(via_json.as_ref().err(), via_workload.as_ref().err(), "from_json and for_workload({workload:?}) disagree for {text}");
        assert_eq!(via_json.as_ref().ok().map(PolicySet::revision), via_workload.as_ref().ok().map(PolicySet::revision));
        if let (Ok(whole), Ok(kept)) = (&via_json, &via_workload) {
            assert_eq!(whole.policies().len(), kept.policies_in_config(), "for_workload counts every policy of {text}");
            assert!(kept.policies().iter().all(|p| whole.policies().iter().any(|w| w.id == p.id)));
        }
    }
    if let Ok(parsed) = PluginConfig::from_json(text.as_bytes()) {
        let via_config = PolicySet::from_config(&parsed);
        assert_eq!(
            via_json.as_ref().err(),
            via_config.as_ref().err(),
            "from_json and from_config disagree for {text}"
        );
    }
    via_json
}

/// A workload the rows' policies select (`app == 'db'`) and one most do not.
fn row_workloads() -> [Workload; 2] {
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect();
    [
        Workload { namespace: "prod".into(), service_account: "web".into(), labels: labels(&[("app", "db")]), ..Workload::default() },
        Workload { namespace: "elsewhere".into(), service_account: "other".into(), labels: labels(&[("app", "web")]), ..Workload::default() },
    ]
}

fn errors_of(what: &str, result: Result<PolicySet, ConfigErrors>) -> Vec<ConfigError> {
    let revision = result.as_ref().map(|set| set.revision().to_string());
    assert!(revision.is_err(), "{what}: expected a rejection, but the config compiled (revision {revision:?})");
    result.err().map(|ConfigErrors(errors)| errors).unwrap_or_default()
}

/// Asserts exactly one error, with this object and field, whose problem contains `fragment`.
fn assert_one_error(what: &str, errors: &[ConfigError], object: &str, field: &str, fragment: &str) {
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{what}: expected exactly one error, got {shown:#?}");
    let e = &errors[0];
    assert_eq!((e.object.as_str(), e.field.as_str()), (object, field), "{what}: wrong object/field in {e}");
    assert!(e.problem.contains(fragment), "{what}: problem should contain {fragment:?}: {e}");
    // The Display form is `object: field: problem`.
    assert_eq!(e.to_string(), format!("{object}: {field}: {}", e.problem), "{what}");
}

/// A version-1 config with a declared tier, three namespaces' worth of identity
/// data and one endpoint, plus the given policies.
fn with_policies(policies: Value) -> Value {
    json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100}],
        "policies": policies,
        "endpoints": [
            {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.1.0.1"]}
        ],
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}],
        "serviceAccounts": [{"namespace": "prod", "name": "web", "labels": {"team": "shop"}}]
    })
}

/// A GlobalNetworkPolicy `p` selecting `app == 'db'`, with extra spec fields.
fn gnp(extra: Value) -> Value {
    let mut base = json!({"name": "p", "selector": "app == 'db'"});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

/// A config whose only policy is GlobalNetworkPolicy `p` with one ingress rule.
fn one_rule(rule: Value) -> Value {
    with_policies(json!([gnp(json!({"ingress": [rule]}))]))
}

/// A config with only identity data (no policies).
fn with_universe(endpoints: Value, namespaces: Value, service_accounts: Value) -> Value {
    json!({"version": 1, "endpoints": endpoints, "namespaces": namespaces, "serviceAccounts": service_accounts})
}

/// JSON `endpoints`, and `table` (the same shape) as the compact endpoint table.
fn with_table(endpoints: Value, table: Value) -> Value {
    with_table_accounts(endpoints, table, json!([]), json!([]))
}

/// As [`with_table`], with JSON `serviceAccounts` and more in the table.
fn with_table_accounts(endpoints: Value, table: Value, accounts: Value, table_accounts: Value) -> Value {
    let config = json!({"version": 1, "endpoints": table, "serviceAccounts": table_accounts});
    let config = PluginConfig::from_json(config.to_string().as_bytes()).unwrap();
    let encoded = krites_policy::config::EndpointTable::new(&config.endpoints, &config.service_accounts).unwrap().encode();
    json!({"version": 1, "endpoints": endpoints, "serviceAccounts": accounts, "endpointTable": encoded})
}

const P: &str = "GlobalNetworkPolicy/p";

/// The YAO Bank tutorial config (copied from the engine tests).
fn yaobank() -> Value {
    json!({
        "version": 1,
        "policies": [
            {"name": "customer", "selector": "app == 'customer'",
             "ingress": [{"action": "Allow", "http": {"methods": ["GET"]}}]},
            {"name": "summary", "selector": "app == 'summary'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["customer"]}}}]},
            {"name": "database", "selector": "app == 'database'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["summary"]}}}]}
        ],
        "endpoints": [
            {"namespace": "default", "serviceAccount": "customer", "labels": {"app": "customer", "version": "v1"}, "ips": ["10.0.0.11"]},
            {"namespace": "default", "serviceAccount": "summary", "labels": {"app": "summary", "version": "v1"}, "ips": ["10.0.0.12", "10.0.0.22"]},
            {"namespace": "default", "serviceAccount": "database", "labels": {"app": "database", "version": "v1"}, "ips": ["10.0.0.13"]},
            {"namespace": "default", "serviceAccount": "default", "labels": {"app": "attack"}, "ips": ["10.0.0.66"]}
        ],
        "namespaces": [{"name": "default"}],
        "serviceAccounts": [
            {"namespace": "default", "name": "customer", "labels": {"app": "yaobank", "summary": "reader"}},
            {"namespace": "default", "name": "summary", "labels": {"app": "yaobank", "database": "reader"}},
            {"namespace": "default", "name": "database", "labels": {"app": "yaobank"}}
        ]
    })
}

/// Each row: description, config, expected object, expected field, a fragment of the problem.
#[test]
fn rejected_configs() {
    let many_methods: Vec<String> = (0..21).map(|i| format!("M{i}")).collect();
    let many_paths: Vec<Value> = (0..21).map(|i| json!({"prefix": format!("/p{i}")})).collect();
    let long_path = format!("/{}", "a".repeat(1024));
    let too_many_rules: Vec<Value> = (0..1025).map(|_| json!({"action": "Allow"})).collect();
    let rows: Vec<(&str, Value, &str, &str, &str)> = vec![
        // ---- Calico rules found missing by an earlier review of this table
        ("port 0", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": [0]}})),
         P, "spec.ingress[0].destination.ports[0]", "1-65535"),
        ("port range from 0", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["0:80"]}})),
         P, "spec.ingress[0].destination.ports[0]", "1-65535"),
        ("signed port", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["+80"]}})),
         P, "spec.ingress[0].destination.ports[0]", "1-65535"),
        ("icmp without protocol ICMP", one_rule(json!({"action": "Allow", "icmp": {"type": 8}})),
         P, "spec.ingress[0].icmp", "need protocol ICMP or ICMPv6"),
        ("icmp code without type", one_rule(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 0}})),
         P, "spec.ingress[0].icmp", "needs an ICMP type"),
        ("icmp not an object", one_rule(json!({"action": "Allow", "protocol": "ICMP", "notICMP": "x"})),
         P, "spec.ingress[0].notICMP", "must be an object"),
        ("ICMP with ipVersion 6", one_rule(json!({"action": "Allow", "protocol": "ICMP", "ipVersion": 6})),
         P, "spec.ingress[0].ipVersion", "ICMP goes with ipVersion 4"),
        ("ICMPv6 with ipVersion 4", one_rule(json!({"action": "Allow", "protocol": "ICMPv6", "ipVersion": 4})),
         P, "spec.ingress[0].ipVersion", "ICMPv6 goes with ipVersion 6"),
        ("IPv6 CIDR in an ipVersion 4 rule", one_rule(json!({"action": "Allow", "ipVersion": 4, "source": {"nets": ["fd00::/8"]}})),
         P, "spec.ingress[0].source.nets[0]", "is not of ipVersion 4"),
        ("IPv4 and IPv6 CIDRs in one rule", one_rule(json!({"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}, "destination": {"notNets": ["fd00::/8"]}})),
         P, "spec.ingress[0]", "mixes IPv4 and IPv6"),
        ("global() combined with a term", one_rule(json!({"action": "Allow", "source": {"namespaceSelector": "global() && env == 'x'"}})),
         P, "spec.ingress[0].source.namespaceSelector", "cannot be combined"),
        ("negated global()", one_rule(json!({"action": "Allow", "source": {"namespaceSelector": "!global()"}})),
         P, "spec.ingress[0].source.namespaceSelector", "cannot be combined"),
        ("duplicate policy types", with_policies(json!([gnp(json!({"types": ["Ingress", "Ingress"]}))])),
         P, "spec.types", "duplicate policy type"),
        ("more than 1024 rules", with_policies(json!([gnp(json!({"ingress": too_many_rules}))])),
         P, "spec.ingress", "at most 1024 rules"),
        ("endpoint without a service account", with_universe(json!([{"namespace": "a", "serviceAccount": "", "ips": []}]), json!([]), json!([])),
         "endpoints[0]", "serviceAccount", "must not be empty"),
        ("service account without a namespace", with_universe(json!([]), json!([]), json!([{"namespace": "", "name": "x"}])),
         "serviceAccounts[0]", "namespace", "must not be empty"),
        ("protocol name is shown plainly", one_rule(json!({"action": "Allow", "protocol": "TCPX"})),
         P, "spec.ingress[0].protocol", "\"TCPX\" is not TCP"),
        ("empty scope", json!({"version": 1, "scope": []}), "plugin config", "scope", "one or more namespace names"),
        // ---- plugin config
        ("unsupported version", json!({"version": 2}), "plugin config", "version", "unsupported version 2 (this build reads 1)"),
        ("version 0", json!({"version": 0, "policies": [gnp(json!({"selector": "app =="}))]}),
         "plugin config", "version", "unsupported version 0"),
        // ---- tiers
        ("empty tier name", json!({"version": 1, "tiers": [{"name": ""}]}), "tiers[0]", "name", "must not be empty"),
        ("duplicate tier", json!({"version": 1, "tiers": [{"name": "security"}, {"name": "security", "order": 5}]}),
         "Tier/security", "name", "duplicate tier"),
        // ---- policy metadata and spec
        ("duplicate GlobalNetworkPolicy", with_policies(json!([gnp(json!({})), gnp(json!({"order": 5}))])),
         P, "metadata.name", "duplicate policy"),
        ("duplicate NetworkPolicy in one namespace",
         with_policies(json!([{"name": "np", "namespace": "prod"}, {"name": "np", "namespace": "prod", "order": 1}])),
         "NetworkPolicy/prod/np", "metadata.name", "duplicate policy"),
        ("duplicate policy keeps its kind in the object",
         with_policies(json!([{"name": "knp.default.x", "namespace": "prod", "kind": "KubernetesNetworkPolicy"},
                              {"name": "knp.default.x", "namespace": "prod", "kind": "KubernetesNetworkPolicy"}])),
         "KubernetesNetworkPolicy/prod/knp.default.x", "metadata.name", "duplicate policy"),
        ("empty policy namespace", with_policies(json!([{"name": "p", "namespace": ""}])),
         "NetworkPolicy//p", "metadata.namespace", "must not be empty"),
        ("undeclared tier", with_policies(json!([gnp(json!({"tier": "nope"}))])),
         P, "spec.tier", "tier \"nope\" is not declared"),
        ("bad policy selector points at the column", with_policies(json!([gnp(json!({"selector": "app == db"}))])),
         P, "spec.selector", "invalid selector \"app == db\": at column 8"),
        ("unterminated policy selector", with_policies(json!([gnp(json!({"selector": "app == 'db"}))])),
         P, "spec.selector", "at column 8"),
        ("global() in a policy selector", with_policies(json!([gnp(json!({"selector": "global()"}))])),
         P, "spec.selector", "global() is only allowed in a rule's namespaceSelector"),
        ("global() inside a policy selector expression",
         with_policies(json!([gnp(json!({"selector": "app == 'db' && !global()"}))])),
         P, "spec.selector", "global() is only allowed"),
        ("namespaceSelector on a namespaced policy",
         with_policies(json!([{"name": "p", "namespace": "prod", "namespaceSelector": "env == 'prod'"}])),
         "NetworkPolicy/prod/p", "spec.namespaceSelector", "only a GlobalNetworkPolicy may select workloads by namespace"),
        ("global() in a GNP namespaceSelector", with_policies(json!([gnp(json!({"namespaceSelector": "global()"}))])),
         P, "spec.namespaceSelector", "global() is only allowed"),
        ("bad GNP namespaceSelector", with_policies(json!([gnp(json!({"namespaceSelector": "env in 'prod'"}))])),
         P, "spec.namespaceSelector", "at column 8"),
        ("bad serviceAccountSelector", with_policies(json!([gnp(json!({"serviceAccountSelector": "team =="}))])),
         P, "spec.serviceAccountSelector", "invalid selector \"team ==\": at column 8"),
        ("global() in a serviceAccountSelector", with_policies(json!([gnp(json!({"serviceAccountSelector": "global()"}))])),
         P, "spec.serviceAccountSelector", "global() is only allowed"),
        // ---- rules: ipVersion, protocol, ports
        ("ipVersion 5", one_rule(json!({"action": "Allow", "ipVersion": 5})), P, "spec.ingress[0].ipVersion", "5 is not 4 or 6"),
        ("ipVersion 0", one_rule(json!({"action": "Allow", "ipVersion": 0})), P, "spec.ingress[0].ipVersion", "0 is not 4 or 6"),
        ("unknown protocol name", one_rule(json!({"action": "Allow", "protocol": "TCPX"})),
         P, "spec.ingress[0].protocol", "is not TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255"),
        ("protocol 0", one_rule(json!({"action": "Allow", "protocol": 0})), P, "spec.ingress[0].protocol", "is not TCP, UDP"),
        ("protocol \"0\"", one_rule(json!({"action": "Allow", "protocol": "0"})), P, "spec.ingress[0].protocol", "is not TCP, UDP"),
        ("protocol \"256\"", one_rule(json!({"action": "Allow", "protocol": "256"})), P, "spec.ingress[0].protocol", "is not TCP, UDP"),
        ("empty protocol name", one_rule(json!({"action": "Allow", "protocol": ""})), P, "spec.ingress[0].protocol", "is not TCP, UDP"),
        ("bad notProtocol", one_rule(json!({"action": "Allow", "notProtocol": "IGMPX"})), P, "spec.ingress[0].notProtocol", "is not TCP, UDP"),
        ("ports without a protocol", one_rule(json!({"action": "Allow", "destination": {"ports": [80]}})),
         P, "spec.ingress[0].protocol", "ports require protocol TCP, UDP or SCTP"),
        ("source notPorts without a protocol", one_rule(json!({"action": "Allow", "source": {"notPorts": ["1:1024"]}})),
         P, "spec.ingress[0].protocol", "ports require protocol TCP, UDP or SCTP"),
        ("ports with protocol ICMP", one_rule(json!({"action": "Allow", "protocol": "ICMP", "destination": {"ports": [80]}})),
         P, "spec.ingress[0].protocol", "ports require protocol TCP, UDP or SCTP"),
        ("ports with protocol UDPLite", one_rule(json!({"action": "Allow", "protocol": "UDPLite", "destination": {"ports": [80]}})),
         P, "spec.ingress[0].protocol", "ports require protocol TCP, UDP or SCTP"),
        ("ports with only notProtocol", one_rule(json!({"action": "Allow", "notProtocol": "UDP", "destination": {"ports": [80]}})),
         P, "spec.ingress[0].protocol", "ports require protocol TCP, UDP or SCTP"),
        ("port range with min > max", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "9:8"]}})),
         P, "spec.ingress[0].destination.ports[1]", "port range \"9:8\" has min > max"),
        ("named source port", one_rule(json!({"action": "Allow", "protocol": "TCP", "source": {"ports": ["http"]}})),
         P, "spec.ingress[0].source.ports[0]", "named port \"http\": source ports must be numbers"),
        ("not a port name", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["HTTP_x"]}})),
         P, "spec.ingress[0].destination.ports[0]", "or a port name"),
        ("port text above 65535", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["70000"]}})),
         P, "spec.ingress[0].destination.ports[0]", "\"70000\" is not a port number (1-65535)"),
        ("range end above 65535", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["80:70000"]}})),
         P, "spec.ingress[0].destination.notPorts[0]", "\"70000\" is not a port number"),
        ("empty port text", one_rule(json!({"action": "Allow", "protocol": "TCP", "source": {"ports": [""]}})),
         P, "spec.ingress[0].source.ports[0]", "is not a port number"),
        // ---- rules: nets
        ("bad CIDR in source.nets", one_rule(json!({"action": "Allow", "source": {"nets": ["10.0.0.0/8", "10.0.0.300/8"]}})),
         P, "spec.ingress[0].source.nets[1]", "\"10.0.0.300/8\" is not an IP address or CIDR"),
        ("bad prefix length in destination.notNets",
         one_rule(json!({"action": "Allow", "destination": {"notNets": ["10.1.0.0/16", "10.0.0.0/33"]}})),
         P, "spec.ingress[0].destination.notNets[1]", "\"10.0.0.0/33\" has an invalid prefix length"),
        ("IPv6 prefix length 129", one_rule(json!({"action": "Allow", "source": {"notNets": ["fd00::/129"]}})),
         P, "spec.ingress[0].source.notNets[0]", "invalid prefix length"),
        ("hostname in nets", one_rule(json!({"action": "Allow", "destination": {"nets": ["example.com"]}})),
         P, "spec.ingress[0].destination.nets[0]", "is not an IP address or CIDR"),
        // ---- rules: entity selectors and service accounts
        ("bad source.selector", one_rule(json!({"action": "Allow", "source": {"selector": "app = 'x'"}})),
         P, "spec.ingress[0].source.selector", "at column 5"),
        ("global() in source.selector", one_rule(json!({"action": "Allow", "source": {"selector": "global()"}})),
         P, "spec.ingress[0].source.selector", "global() is only allowed in a rule's namespaceSelector"),
        ("global() in source.notSelector", one_rule(json!({"action": "Allow", "source": {"notSelector": "global()"}})),
         P, "spec.ingress[0].source.notSelector", "global() is only allowed"),
        ("bad source.namespaceSelector", one_rule(json!({"action": "Allow", "source": {"namespaceSelector": "env =="}})),
         P, "spec.ingress[0].source.namespaceSelector", "at column 7"),
        ("services in source with a selector", one_rule(json!({"action": "Allow", "source": {"services": {"name": "db", "namespace": "prod"}, "selector": "app == 'x'"}})),
         P, "spec.ingress[0].source.selector", "cannot be combined with services"),
        ("services in destination", one_rule(json!({"action": "Allow", "destination": {"services": {"name": "db"}}})),
         P, "spec.ingress[0].destination.services", "a destination Service match is only valid on egress rules"),
        ("empty serviceAccounts name",
         one_rule(json!({"action": "Allow", "source": {"serviceAccounts": {"names": ["web", ""]}}})),
         P, "spec.ingress[0].source.serviceAccounts.names[1]", "must not be empty"),
        ("bad serviceAccounts.selector",
         one_rule(json!({"action": "Allow", "source": {"serviceAccounts": {"selector": "has(team"}}})),
         P, "spec.ingress[0].source.serviceAccounts.selector", "at column 9"),
        ("global() in serviceAccounts.selector",
         one_rule(json!({"action": "Allow", "source": {"serviceAccounts": {"selector": "global()"}}})),
         P, "spec.ingress[0].source.serviceAccounts.selector", "global() is only allowed"),
        // ---- rules: HTTP
        ("http on a Deny rule", one_rule(json!({"action": "Deny", "http": {"methods": ["GET"]}})),
         P, "spec.ingress[0].http", "HTTP match is only allowed on Allow rules"),
        ("http on a Pass rule", one_rule(json!({"action": "Pass", "http": {"paths": [{"prefix": "/"}]}})),
         P, "spec.ingress[0].http", "HTTP match is only allowed on Allow rules"),
        ("http on a Log rule", one_rule(json!({"action": "Log", "http": {}})),
         P, "spec.ingress[0].http", "HTTP match is only allowed on Allow rules"),
        ("http with protocol UDP", one_rule(json!({"action": "Allow", "protocol": "UDP", "http": {"methods": ["GET"]}})),
         P, "spec.ingress[0].http", "HTTP match requires protocol TCP"),
        ("http with protocol 17", one_rule(json!({"action": "Allow", "protocol": 17, "http": {"methods": ["GET"]}})),
         P, "spec.ingress[0].http", "HTTP match requires protocol TCP"),
        ("duplicate method", one_rule(json!({"action": "Allow", "http": {"methods": ["GET", "POST", "GET"]}})),
         P, "spec.ingress[0].http.methods[2]", "duplicate method \"GET\""),
        ("empty method", one_rule(json!({"action": "Allow", "http": {"methods": ["GET", ""]}})),
         P, "spec.ingress[0].http.methods[1]", "\"\" is not an HTTP method"),
        ("method with a space", one_rule(json!({"action": "Allow", "http": {"methods": ["GET POST"]}})),
         P, "spec.ingress[0].http.methods[0]", "is not an HTTP method"),
        ("method with a separator", one_rule(json!({"action": "Allow", "http": {"methods": ["GET/1"]}})),
         P, "spec.ingress[0].http.methods[0]", "is not an HTTP method"),
        ("more than 20 methods", one_rule(json!({"action": "Allow", "http": {"methods": many_methods}})),
         P, "spec.ingress[0].http.methods", "at most 20 methods"),
        ("more than 20 paths", one_rule(json!({"action": "Allow", "http": {"paths": many_paths}})),
         P, "spec.ingress[0].http.paths", "at most 20 paths"),
        ("path with both exact and prefix",
         one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": "/a"}, {"exact": "/b", "prefix": "/b"}]}})),
         P, "spec.ingress[0].http.paths[1]", "exactly one of exact and prefix is required"),
        ("path with neither exact nor prefix", one_rule(json!({"action": "Allow", "http": {"paths": [{}]}})),
         P, "spec.ingress[0].http.paths[0]", "exactly one of exact and prefix is required"),
        ("path not starting with '/'", one_rule(json!({"action": "Allow", "http": {"paths": [{"prefix": "admin"}]}})),
         P, "spec.ingress[0].http.paths[0]", "\"admin\" must start with '/'"),
        ("empty path", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": ""}]}})),
         P, "spec.ingress[0].http.paths[0]", "must start with '/'"),
        ("path containing '?'", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": "/a?b=1"}]}})),
         P, "spec.ingress[0].http.paths[0]", "have no '?', '#' or space"),
        ("path containing '#'", one_rule(json!({"action": "Allow", "http": {"paths": [{"prefix": "/a#frag"}]}})),
         P, "spec.ingress[0].http.paths[0]", "have no '?', '#' or space"),
        ("path containing a space", one_rule(json!({"action": "Allow", "http": {"paths": [{"prefix": "/a b"}]}})),
         P, "spec.ingress[0].http.paths[0]", "have no '?', '#' or space"),
        ("path longer than 1024 bytes", one_rule(json!({"action": "Allow", "http": {"paths": [{"prefix": long_path}]}})),
         P, "spec.ingress[0].http.paths[0]", "at most 1024 bytes"),
        ("path with an encoded slash", one_rule(json!({"action": "Allow", "http": {"paths": [{"prefix": "/a%2fb"}]}})),
         P, "spec.ingress[0].http.paths[0]", "\"/a%2fb\": path contains an encoded '/'"),
        ("path with an encoded dot-dot", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": "/%2e%2e/admin"}]}})),
         P, "spec.ingress[0].http.paths[0]", "path contains an encoded"),
        ("path with a bad escape", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": "/a%zz"}]}})),
         P, "spec.ingress[0].http.paths[0]", "not a valid escape"),
        ("path encoded twice", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": "/%2561dmin"}]}})),
         P, "spec.ingress[0].http.paths[0]", "percent-encoded twice"),
        ("path with an encoded NUL", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": "/a%00"}]}})),
         P, "spec.ingress[0].http.paths[0]", "NUL or control character"),
        ("the rule index is in the field",
         with_policies(json!([gnp(json!({"ingress": [{"action": "Allow"}, {"action": "Log"}, {"action": "Allow", "ipVersion": 7}]}))])),
         P, "spec.ingress[2].ipVersion", "7 is not 4 or 6"),
        // ---- endpoints, namespaces, service accounts
        ("endpoint with a bad IP",
         with_universe(json!([{"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1", "10.1.0.256"]}]), json!([]), json!([])),
         "endpoints[0]", "ips[1]", "\"10.1.0.256\" is not an IP address"),
        ("endpoint IP given as a CIDR",
         with_universe(json!([{"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1/32"]}]), json!([]), json!([])),
         "endpoints[0]", "ips[0]", "is not an IP address"),
        ("same IP owned by two endpoint groups",
         with_universe(json!([
             {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.1.0.1"]},
             {"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api"}, "ips": ["10.1.0.2", "10.1.0.1"]}
         ]), json!([]), json!([])),
         "endpoints[1]", "ips[1]", "10.1.0.1 already belongs to endpoints[0]; an address must have one owner"),
        ("same IP in groups differing only in labels",
         with_universe(json!([
             {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "version": "v1"}, "ips": ["10.1.0.1"]},
             {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "version": "v2"}, "ips": ["10.1.0.1"]}
         ]), json!([]), json!([])),
         "endpoints[1]", "ips[0]", "already belongs to endpoints[0]"),
        ("IPv4-mapped IPv6 is the same address",
         with_universe(json!([
             {"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1"]},
             {"namespace": "dev", "serviceAccount": "web", "ips": ["::ffff:10.1.0.1"]}
         ]), json!([]), json!([])),
         "endpoints[1]", "ips[0]", "10.1.0.1 already belongs to endpoints[0]"),
        ("differently written IPv6 is the same address",
         with_universe(json!([
             {"namespace": "prod", "serviceAccount": "web", "ips": ["fd00::1"]},
             {"namespace": "dev", "serviceAccount": "web", "ips": ["fd00:0:0::0001"]}
         ]), json!([]), json!([])),
         "endpoints[1]", "ips[0]", "fd00::1 already belongs to endpoints[0]"),
        ("empty endpoint namespace",
         with_universe(json!([{"namespace": "", "serviceAccount": "web", "ips": ["10.1.0.1"]}]), json!([]), json!([])),
         "endpoints[0]", "namespace", "must not be empty"),
        ("duplicate namespace",
         with_universe(json!([]), json!([{"name": "prod"}, {"name": "dev"}, {"name": "prod", "labels": {"env": "x"}}]), json!([])),
         "Namespace/prod", "name", "duplicate namespace"),
        ("empty namespace name", with_universe(json!([]), json!([{"name": ""}]), json!([])),
         "namespaces[0]", "name", "must not be empty"),
        ("duplicate service account",
         with_universe(json!([]), json!([]), json!([{"namespace": "prod", "name": "web"}, {"namespace": "prod", "name": "web"}])),
         "ServiceAccount/prod/web", "name", "duplicate service account"),
        ("empty service account name",
         with_universe(json!([]), json!([]), json!([{"namespace": "prod", "name": ""}])),
         "serviceAccounts[0]", "name", "must not be empty"),
        // ---- the compact endpoint table: its groups are named after the JSON ones
        ("table group with an empty namespace",
         with_table(json!([{"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1"]}]),
                    json!([{"namespace": "", "serviceAccount": "web", "ips": ["10.1.0.2"]}])),
         "endpointTable.groups[0]", "namespace", "must not be empty"),
        ("table group with an empty service account",
         with_table(json!([]), json!([{"namespace": "a", "serviceAccount": "web", "ips": []}, {"namespace": "prod", "serviceAccount": "", "ips": ["10.1.0.2"]}])),
         "endpointTable.groups[1]", "serviceAccount", "must not be empty"),
        ("table address owned by a JSON endpoint",
         with_table(json!([{"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.5"]}]),
                    json!([{"namespace": "prod", "serviceAccount": "api", "ips": ["10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]}])),
         "endpointTable.groups[0]", "addresses", "10.1.0.5 already belongs to endpoints[0]; an address must have one owner"),
        ("table address in two table groups",
         with_table(json!([]), json!([
             {"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1", "10.1.0.2", "10.1.0.3"]},
             {"namespace": "prod", "serviceAccount": "api", "ips": ["fd00::9", "10.1.0.3"]}
         ])),
         "endpointTable.groups[1]", "addresses", "10.1.0.3 already belongs to endpointTable.groups[0]"),
        ("table IPv6 address owned by a JSON endpoint",
         with_table(json!([{"namespace": "prod", "serviceAccount": "web", "ips": ["fd00:0::9"]}]),
                    json!([{"namespace": "prod", "serviceAccount": "api", "ips": ["fd00::9"]}])),
         "endpointTable.groups[0]", "addresses", "fd00::9 already belongs to endpoints[0]"),
        ("table service account with an empty name",
         with_table_accounts(json!([]), json!([]), json!([]), json!([{"namespace": "prod", "name": "web"}, {"namespace": "prod", "name": ""}])),
         "endpointTable.serviceAccounts[1]", "name", "must not be empty"),
        ("service account in JSON and in the table",
         with_table_accounts(json!([]), json!([]), json!([{"namespace": "prod", "name": "web"}]), json!([{"namespace": "prod", "name": "web", "labels": {"pci": "true"}}])),
         "ServiceAccount/prod/web", "name", "duplicate service account"),
        ("table that is not base64", json!({"version": 1, "endpointTable": "a table!"}),
         "plugin config", "endpointTable", "not base64"),
        ("table of another format", json!({"version": 1, "endpointTable": "Ag=="}),
         "plugin config", "endpointTable", "format 2 is not the table format this build reads (1)"),
        ("table cut short", json!({"version": 1, "endpointTable": "AQMCbnM="}),
         "plugin config", "endpointTable", "the table ends"),
        ("table not a string", json!({"version": 1, "endpointTable": [1]}),
         "plugin config", "endpointTable", "expected a string"),
    ];
    let count = rows.len();
    for (what, config, object, field, fragment) in rows {
        let errors = errors_of(what, compile(&config));
        assert_one_error(what, &errors, object, field, fragment);
    }
    assert!(count >= 80, "table shrank to {count} rows");
}

/// Rows whose text is not config JSON, reported against "plugin config": a
/// syntax error names its line and column as the field; a value of the wrong
/// shape names its path as the field, and its position in the problem.
#[test]
fn rejected_json_text() {
    let rows: &[(&str, &str, &str, &str)] = &[
        ("malformed JSON", "{\"version\": 1,", "line 1 column 14", "EOF while parsing an object"),
        ("not an object", "\"config\"", "(top level)", "must be a JSON object"),
        ("an array is not a config", "[1, null, [], [{\"name\": \"p\"}]]", "(top level)", "must be a JSON object"),
        ("empty input", "", "(top level)", "must be a JSON object"),
        ("trailing garbage", "{\"version\": 1} x", "line 1 column 16", "trailing characters"),
        ("missing version", "{\"policies\": []}", "version", "missing field `version` at line 1 column 16"),
        ("unknown top-level field", "{\"version\": 1, \"polices\": []}", "polices",
         "unknown field `polices`, expected one of `version`, `revision`, `scope`, `tiers`, `policies`"),
        ("unknown field on a later line",
         "{\n  \"version\": 1,\n  \"policies\": [\n    {\"name\": \"p\", \"egres\": []}\n  ]\n}",
         "policies[0].egres", "unknown field `egres`, expected one of `name`, `namespace`"),
        ("unknown rule field",
         "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"Allow\", \"sources\": {}}]}]}",
         "policies[0].ingress[0].sources", "unknown field `sources`, expected one of `action`"),
        ("lowercase action", "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"allow\"}]}]}",
         "policies[0].ingress[0].action", "unknown variant `allow`, expected one of `Allow`, `Deny`, `Log`, `Pass`"),
        ("missing action", "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{}]}]}",
         "policies[0].ingress[0].action", "missing field `action`"),
        ("port 70000",
         "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"Allow\", \"protocol\": \"TCP\", \"destination\": {\"ports\": [70000]}}]}]}",
         "policies[0].ingress[0].destination.ports[0]", "invalid value: integer `70000`, expected a port number from 0 to 65535"),
        ("negative port",
         "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"Allow\", \"protocol\": \"TCP\", \"destination\": {\"ports\": [-1]}}]}]}",
         "policies[0].ingress[0].destination.ports[0]", "invalid value: integer `-1`"),
        ("fractional port",
         "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"Allow\", \"protocol\": \"TCP\", \"destination\": {\"ports\": [80.5]}}]}]}",
         "policies[0].ingress[0].destination.ports[0]", "invalid type: floating point `80.5`"),
        ("protocol 256", "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"Allow\", \"protocol\": 256}]}]}",
         "policies[0].ingress[0].protocol", "invalid value: integer `256`, expected a protocol name or a number from 0 to 255"),
        ("ipVersion 300", "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"ingress\": [{\"action\": \"Allow\", \"ipVersion\": 300}]}]}",
         "policies[0].ingress[0].ipVersion", "invalid value: integer `300`, expected an IP version (4 or 6)"),
        ("unknown tier default action", "{\"version\": 1, \"tiers\": [{\"name\": \"t\", \"defaultAction\": \"Allow\"}]}",
         "tiers[0].defaultAction", "unknown variant `Allow`, expected `Deny` or `Pass`"),
        ("unknown policy type", "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"types\": [\"ingress\"]}]}",
         "policies[0].types[0]", "unknown variant `ingress`, expected `Ingress` or `Egress`"),
        ("endpoint without ips", "{\"version\": 1, \"endpoints\": [{\"namespace\": \"a\", \"serviceAccount\": \"b\"}]}",
         "endpoints[0].ips", "missing field `ips`"),
        ("label value not a string", "{\"version\": 1, \"namespaces\": [{\"name\": \"a\", \"labels\": {\"x\": 1}}]}",
         "namespaces[0].labels.x", "invalid type: a number, expected a string"),
        ("a field given twice", "{\"version\": 1, \"policies\": [{\"name\": \"p\", \"name\": \"q\"}]}",
         "policies[0].name", "duplicate field `name`"),
        ("a label given twice", "{\"version\": 1, \"namespaces\": [{\"name\": \"a\", \"labels\": {\"x\": \"1\", \"x\": \"2\"}}]}",
         "namespaces[0].labels.x", "duplicate label `x`"),
        ("null for a list", "{\"version\": 1, \"policies\": null}", "policies", "invalid type: null, expected an array"),
        ("version as a float", "{\"version\": 1.0}", "version", "invalid type: floating point `1.0`"),
        ("a policy's shape before an unknown version",
         "{\"version\": 0, \"policies\": [{\"name\": \"p\", \"types\": [\"ingress\"]}]}",
         "policies[0].types[0]", "unknown variant `ingress`"),
        ("order out of range", "{\"version\": 1, \"tiers\": [{\"name\": \"t\", \"order\": 1e400}]}", "tiers[0].order", "number out of range"),
        ("raw control character in a string", "{\"version\": 1, \"revision\": \"a\tb\"}", "line 1 column 30", "control character"),
        ("lone surrogate", "{\"version\": 1, \"revision\": \"\\udc00\"}", "line 1 column 34", "lone trailing surrogate"),
        ("free-form value nested too deep",
         &format!("{{\"version\": 1, \"policies\": [{{\"name\": \"p\", \"ingress\": [{{\"action\": \"Allow\", \"metadata\": {}1{}}}]}}]}}", "[".repeat(200), "]".repeat(200)),
         "line 1 column 215", "recursion limit exceeded"),
    ];
    for (what, text, field, fragment) in rows {
        let errors = errors_of(what, from_text(text));
        assert_one_error(what, &errors, "plugin config", field, fragment);
        // The filter's readers keep the policies as text, checked as they are read: the same error.
        let owned = PolicySet::from_json_owned(text.as_bytes().to_vec()).err().map(|e| e.0);
        assert_eq!(owned.as_ref(), Some(&errors), "{what}: from_json_owned");
        for workload in row_workloads() {
            let kept = PolicySet::for_workload(text.as_bytes().to_vec(), &workload).err().map(|e| e.0);
            assert_eq!(kept.as_ref(), Some(&errors), "{what}: for_workload");
        }
        // Every error past the first byte says where it is.
        if field.starts_with("line ") {
            assert!(errors[0].problem.ends_with(&format!("at {field}")), "{what}: {}", errors[0]);
        } else if *field != "(top level)" {
            assert!(errors[0].problem.contains(" at line "), "{what}: {}", errors[0]);
        }
    }
}

/// A rule's id holds its policy's place in 20 bits (the engine keeps ids in
/// 32): a config with more policies, staged ones counted, is refused before
/// any is compiled, rather than have one policy's rules read as another's.
/// A policy that is not the config's shape is still the first error. Native
/// only: the text is 20 MB.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn more_policies_than_rule_ids_hold_are_refused() {
    const LIMIT: usize = 1 << 20;
    let text = |policies: usize, staged: &str, last: &str| {
        let mut text = String::from("{\"version\": 1, \"policies\": [");
        for i in 0..policies {
            text.push_str(if i + 1 == policies { last } else { "{\"name\": \"p\"}," });
        }
        text + "], \"stagedPolicies\": [" + staged + "]}"
    };
    let first_errors = |text: String| {
        let via_json = from_text(&text).err().map(|e| e.0);
        let via_owned = PolicySet::from_json_owned(text.clone().into_bytes()).err().map(|e| e.0);
        let via_workload = PolicySet::for_workload(text.into_bytes(), &row_workloads()[0]).err().map(|e| e.0);
        assert_eq!(via_json, via_owned, "from_json and from_json_owned");
        assert_eq!(via_json, via_workload, "from_json and for_workload");
        via_json.unwrap_or_default()
    };
    let rows: &[(&str, usize, &str, &str, &str, &str)] = &[
        ("one policy too many", LIMIT + 1, "", "{\"name\": \"p\"}", "policies", "1048577 policies (staged ones included) are more than the 1048576"),
        ("the limit, and one staged", LIMIT, "{\"name\": \"s\", \"stagedAction\": \"Delete\"}", "{\"name\": \"p\"}", "policies", "1048577 policies"),
        ("too many, the last misshapen", LIMIT + 1, "", "{\"name\": \"p\", \"types\": [\"ingress\"]}", "policies[1048576].types[0]", "unknown variant `ingress`"),
    ];
    for &(what, policies, staged, last, field, fragment) in rows {
        let errors = first_errors(text(policies, staged, last));
        assert_one_error(what, &errors, "plugin config", field, fragment);
    }
}

/// A policy without a name is named by its position.
#[test]
fn empty_policy_name_is_rejected() {
    let rows: Vec<(&str, Value)> = vec![
        ("empty GNP name", with_policies(json!([gnp(json!({"name": ""}))]))),
        ("empty NP name", with_policies(json!([{"name": "", "namespace": "prod"}]))),
    ];
    for (what, config) in rows {
        let errors = errors_of(what, compile(&config));
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert_eq!((errors[0].object.as_str(), errors[0].field.as_str()), ("policies[0]", "metadata.name"), "{what}: {}", errors[0]);
        assert!(errors[0].problem.contains("must not be empty"), "{what}: {}", errors[0]);
    }
}

/// One bad object never hides another's errors: each bad object reports, in
/// config order, and good objects around them report nothing.
#[test]
fn every_bad_object_is_reported() {
    let config = json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100}],
        "policies": [
            gnp(json!({"name": "good-1", "ingress": [{"action": "Allow"}]})),
            gnp(json!({"name": "bad-selector", "selector": "app =="})),
            gnp(json!({"name": "good-2", "tier": "security"}))
        ],
        "endpoints": [
            {"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1"]},
            {"namespace": "prod", "serviceAccount": "api", "ips": ["not-an-ip"]}
        ],
        "namespaces": [{"name": "prod"}, {"name": "prod"}]
    });
    let errors = errors_of("three bad objects", compile(&config));
    let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.object.as_str(), e.field.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("GlobalNetworkPolicy/bad-selector", "spec.selector"),
            ("Namespace/prod", "name"),
            ("endpoints[1]", "ips[0]"),
        ],
        "{errors:#?}"
    );

    // Several problems inside one policy, across rules and fields, are all reported.
    let config = with_policies(json!([gnp(json!({
        "tier": "nope",
        "selector": "global()",
        "ingress": [
            {"action": "Allow", "ipVersion": 5, "source": {"nets": ["x"]}},
            {"action": "Deny", "protocol": "UDP", "http": {"methods": ["GET", "GET"]}}
        ]
    }))]));
    let errors = errors_of("one policy, many problems", compile(&config));
    let got: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "spec.tier",
            "spec.selector",
            "spec.ingress[0].ipVersion",
            "spec.ingress[0].source.nets[0]",
            "spec.ingress[1].http",
            "spec.ingress[1].http",
            "spec.ingress[1].http.methods[1]",
        ],
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e.object == P), "{errors:#?}");

    // The Display of all errors joins them with "; ".
    let text = ConfigErrors(errors.clone()).to_string();
    assert_eq!(text.matches("; ").count(), errors.len() - 1, "{text}");
    assert!(text.starts_with("GlobalNetworkPolicy/p: spec.tier: tier \"nope\" is not declared; "), "{text}");
}

/// Configs that must compile.
#[test]
fn accepted_configs() {
    let rows: Vec<(&str, Value)> = vec![
        ("YAO Bank", yaobank()),
        ("empty config", json!({"version": 1})),
        ("named destination ports", one_rule(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http", 8443, "9000:9010"], "notPorts": ["metrics"]}}))),
        ("GNP rule namespaceSelector global()", one_rule(json!({"action": "Allow", "source": {"namespaceSelector": "global()"}}))),
        ("NP rule namespaceSelector global()",
         with_policies(json!([{"name": "np", "namespace": "prod", "ingress": [{"action": "Allow", "source": {"namespaceSelector": "global()"}}]}]))),
        ("GNP namespaceSelector and serviceAccountSelector",
         with_policies(json!([gnp(json!({"namespaceSelector": "env == 'prod'", "serviceAccountSelector": "team == 'shop'"}))]))),
        ("NP serviceAccountSelector", with_policies(json!([{"name": "np", "namespace": "prod", "serviceAccountSelector": "all()"}]))),
        ("same name as GNP and as NP", with_policies(json!([gnp(json!({})), {"name": "p", "namespace": "prod"}]))),
        ("same NP name in two namespaces", with_policies(json!([{"name": "np", "namespace": "prod"}, {"name": "np", "namespace": "dev"}]))),
        ("built-in tiers need no declaration",
         with_policies(json!([gnp(json!({"name": "a", "tier": "kube-admin"})), gnp(json!({"name": "b", "tier": "kube-baseline"})),
                              gnp(json!({"name": "c", "tier": "default"}))]))),
        ("declared tier", with_policies(json!([gnp(json!({"tier": "security", "order": -5.5}))]))),
        ("every action without http",
         with_policies(json!([gnp(json!({"ingress": [{"action": "Log"}, {"action": "Pass"}, {"action": "Deny"}, {"action": "Allow"}]}))]))),
        ("ports with TCP, UDP, SCTP and numbers",
         with_policies(json!([gnp(json!({"ingress": [
             {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "8000:8080", "443"]}},
             {"action": "Allow", "protocol": "UDP", "source": {"notPorts": ["53"]}},
             {"action": "Allow", "protocol": "SCTP", "destination": {"notPorts": [9]}},
             {"action": "Allow", "protocol": 6, "destination": {"ports": ["1:65535"]}},
             {"action": "Allow", "protocol": "17", "destination": {"ports": [5353]}}
         ]}))]))),
        ("other protocols without ports",
         with_policies(json!([gnp(json!({"ingress": [
             {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}},
             {"action": "Deny", "protocol": "ICMPv6"},
             {"action": "Deny", "protocol": "UDPLite"},
             {"action": "Deny", "protocol": 255},
             {"action": "Deny", "notProtocol": "TCP"}
         ]}))]))),
        ("IPv4 nets, bare IPs and host bits",
         one_rule(json!({"action": "Allow", "ipVersion": 4, "source": {"nets": ["10.0.0.0/8", "192.0.2.1", "10.1.2.3/16"],
                                                                     "notNets": ["10.9.0.0/16"]}}))),
        ("IPv6 nets and bare IPs",
         one_rule(json!({"action": "Allow", "ipVersion": 6, "source": {"nets": ["fd00::/8"]}, "destination": {"notNets": ["::1"]}}))),
        ("http: methods, wildcard and paths",
         one_rule(json!({"action": "Allow", "protocol": "TCP", "http": {
             "methods": ["GET", "HEAD", "*", "PROPFIND"],
             "paths": [{"exact": "/"}, {"prefix": "/api/"}, {"exact": "/a/./b/../c"}, {"prefix": "/x%41y"}]}}))),
        ("http: exactly 20 methods and 20 paths",
         one_rule(json!({"action": "Allow", "http": {
             "methods": (0..20).map(|i| format!("M{i}")).collect::<Vec<_>>(),
             "paths": (0..20).map(|i| json!({"prefix": format!("/p{i}")})).collect::<Vec<_>>()}}))),
        ("http: empty match", one_rule(json!({"action": "Allow", "http": {}}))),
        ("path of exactly 1024 bytes", one_rule(json!({"action": "Allow", "http": {"paths": [{"exact": format!("/{}", "a".repeat(1023))}]}}))),
        ("serviceAccounts names and selector",
         one_rule(json!({"action": "Allow", "source": {"serviceAccounts": {"names": ["web", "api"], "selector": "team == 'shop'"}}}))),
        ("rule metadata is carried",
         one_rule(json!({"action": "Allow", "metadata": {"annotations": {"a": "b"}}}))),
        ("same IP twice within one endpoint entry",
         with_universe(json!([{"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.1.0.1", "10.1.0.1"]}]),
                       json!([]), json!([]))),
        ("same IP in two entries of one group",
         with_universe(json!([
             {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.1.0.1", "10.1.0.2"]},
             {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.1.0.3", "10.1.0.1"]}
         ]), json!([]), json!([]))),
        ("same IP, IPv4 and IPv4-mapped, in one group",
         with_universe(json!([{"namespace": "prod", "serviceAccount": "web", "ips": ["10.1.0.1", "::ffff:10.1.0.1"]}]), json!([]), json!([]))),
        ("endpoint with no ips", with_universe(json!([{"namespace": "prod", "serviceAccount": "web", "ips": []}]), json!([]), json!([]))),
        ("same service account name in two namespaces",
         with_universe(json!([]), json!([]), json!([{"namespace": "prod", "name": "web"}, {"namespace": "dev", "name": "web"}]))),
        ("producer revision is informational", json!({"version": 1, "revision": "generation-42"})),
    ];
    for (what, config) in rows {
        if let Err(e) = compile(&config) {
            panic!("{what}: expected the config to compile, got: {e}");
        }
    }
}

/// Writes JSON with every object's keys in reverse order and generous whitespace.
fn reversed_pretty(v: &Value, indent: usize, out: &mut String) {
    let pad = "    ".repeat(indent + 1);
    match v {
        Value::Object(map) => {
            out.push_str("{\n");
            let entries: Vec<_> = map.iter().rev().collect();
            for (i, (k, v)) in entries.iter().enumerate() {
                out.push_str(&pad);
                out.push_str(&Value::String(k.to_string()).to_string());
                out.push_str(" :\t");
                reversed_pretty(v, indent + 1, out);
                if i + 1 < entries.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&"    ".repeat(indent));
            out.push('}');
        }
        Value::Array(items) => {
            out.push_str("[ ");
            for (i, item) in items.iter().enumerate() {
                reversed_pretty(item, indent + 1, out);
                if i + 1 < items.len() {
                    out.push_str(" ,\r\n");
                    out.push_str(&pad);
                }
            }
            out.push_str(" ]");
        }
        other => out.push_str(&other.to_string()),
    }
}

#[test]
fn revision_hashes_canonical_json() {
    let config = yaobank();
    let compact = serde_json::to_string(&config).expect("serialises");
    let mut reordered = String::new();
    reversed_pretty(&config, 0, &mut reordered);
    assert_ne!(compact, reordered);

    let a = from_text(&compact).unwrap_or_else(|e| panic!("compact compiles: {e}"));
    let b = from_text(&reordered).unwrap_or_else(|e| panic!("reordered compiles: {e}\n{reordered}"));
    let parsed = PluginConfig::from_json(compact.as_bytes()).expect("parses");
    let c = PolicySet::from_config(&parsed).unwrap_or_else(|e| panic!("from_config compiles: {e}"));

    let revision = a.revision();
    assert_eq!(revision.len(), 16, "{revision}");
    assert!(revision.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{revision}");
    assert_eq!(b.revision(), revision, "whitespace and key order must not change the revision");
    assert_eq!(c.revision(), revision, "from_config and from_json must agree");
    assert_eq!(a.producer_revision(), None);

    // Explicit defaults are canonicalised away too (empty lists are not serialised).
    let mut with_empty = config.clone();
    with_empty["tiers"] = json!([]);
    let d = compile(&with_empty).unwrap_or_else(|e| panic!("with empty tiers: {e}"));
    assert_eq!(d.revision(), revision);

    // Any semantic change changes the revision.
    let mut changed = config.clone();
    changed["endpoints"][3]["ips"][0] = json!("10.0.0.67");
    let e = compile(&changed).unwrap_or_else(|e| panic!("changed config compiles: {e}"));
    assert_ne!(e.revision(), revision);

    // Free-form values count by what they say: member order and the sign of zero do not
    // change the revision, their content does. (`-0` in the text is written back as `0`.)
    let with_metadata = |metadata: &str| {
        let mut c = config.clone();
        c["policies"][0]["ingress"][0]["metadata"] = serde_json::from_str(metadata).expect("metadata JSON");
        compile(&c).unwrap_or_else(|e| panic!("{metadata}: {e}")).revision().to_string()
    };
    let annotated = with_metadata(r#"{"annotations": {"a": "1", "b": [0, -0, 1.5]}}"#);
    assert_eq!(annotated, with_metadata(r#"{"annotations": {"b": [-0, 0, 1.5], "a": "1"}}"#));
    assert_ne!(annotated, with_metadata(r#"{"annotations": {"a": "2", "b": [0, -0, 1.5]}}"#));
    assert_ne!(annotated, revision);
    let signed_zero = r#"{"version":1,"policies":[{"name":"p","ingress":[{"action":"Allow","metadata":-0}]}]}"#;
    let set = from_text(signed_zero).unwrap_or_else(|e| panic!("{e}"));
    let canonical = serde_json::to_string(&PluginConfig::from_json(signed_zero.as_bytes()).expect("reads")).expect("writes");
    assert_eq!(from_text(&canonical).map(|s| s.revision().to_string()).ok().as_deref(), Some(set.revision()), "{canonical}");

    // The producer's label is kept, and (being part of the config) is hashed.
    let mut labelled = config;
    labelled["revision"] = json!("generation-7");
    let f = compile(&labelled).unwrap_or_else(|e| panic!("labelled config compiles: {e}"));
    assert_eq!(f.producer_revision(), Some("generation-7"));
    assert_ne!(f.revision(), revision);
}
