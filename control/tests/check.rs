//! `control check` as a user runs it: the first line says ALLOW or DENY with
//! the deciding rule and why; exit 0 allow, 1 deny, 2 bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;
use std::process::Command;

const INGRESS: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const SUMMARY: &str = "spiffe://cluster.local/ns/default/sa/summary";

fn check(inputs: &str, args: &[&str]) -> (i32, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_control"))
        .current_dir(root)
        .args(["check", "-f", inputs])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Each row: description, args, expected exit code, expected start of the first line, text the output contains.
fn table(inputs: &str, rows: &[(&str, Vec<&str>, i32, &str, &str)]) {
    for (what, args, code, first, contains) in rows {
        let (got, stdout, stderr) = check(inputs, args);
        let line = stdout.lines().next().unwrap_or("");
        assert_eq!(got, *code, "{what}: exit code\n{stdout}{stderr}");
        assert!(line.starts_with(first), "{what}: first line {line:?} should start with {first:?}");
        assert!(stdout.contains(contains) || stderr.contains(contains), "{what}: should mention {contains:?}\n{stdout}{stderr}");
    }
}

#[test]
fn yaobank_tutorial_through_check() {
    let customer = "default/customer-7c9b8d6f5-x2kqp";
    let summary = "default/summary-5f6d8b9c7d-4hzlt";
    let summary2 = "default/summary-5f6d8b9c7d-q8wmn";
    let database = "default/database-6d4b9f8c5b-vm7rs";
    let attack = "default/attack-86b7c5d9f4-zk2p9";
    table("tests/fixtures/yaobank", &[
        ("browser GET via the ingress", vec!["--to", customer, "--from-ip", "127.0.0.10", "--principal", INGRESS], 0, "ALLOW default/customer/ingress[0]", "mTLS as"),
        ("browser POST", vec!["--to", customer, "--from-ip", "127.0.0.10", "--principal", INGRESS, "--method", "POST"], 1, "DENY tier/default", "no rule matched"),
        ("customer calls summary", vec!["--to", summary, "--from", customer], 0, "ALLOW default/summary/ingress[0]", "certificate default/customer matches"),
        ("summary reads the database", vec!["--to", database, "--from", summary, "--path", "/v2/keys/accounts"], 0, "ALLOW default/database/ingress[0]", "port 2379"),
        ("second summary replica", vec!["--to", database, "--from", summary2, "--method", "PUT"], 0, "ALLOW default/database/ingress[0]", ""),
        ("compromised customer reads the database", vec!["--to", database, "--from", customer], 1, "DENY tier/default", ""),
        ("attack pod, stolen summary certificate, GET", vec!["--to", database, "--from-ip", "127.0.0.66", "--principal", SUMMARY], 1, "DENY tier/default", "certificate says default/summary but no known pod owns 127.0.0.66"),
        ("attack pod, stolen summary certificate, PUT", vec!["--to", database, "--from", attack, "--principal", SUMMARY, "--method", "PUT"], 1, "DENY tier/default", "certificate says default/summary"),
        ("summary in plaintext", vec!["--to", database, "--from", summary, "--plaintext"], 0, "ALLOW default/database/ingress[0]", "plaintext"),
        ("attack pod in plaintext", vec!["--to", database, "--from", attack, "--plaintext"], 1, "DENY tier/default", "plaintext from 127.0.0.66"),
        ("customer in plaintext", vec!["--to", database, "--from", customer, "--plaintext"], 1, "DENY tier/default", ""),
        ("nothing selects the attack pod", vec!["--to", attack, "--from", customer, "--method", "DELETE"], 0, "ALLOW profile", "no policy selects"),
    ]);
}

#[test]
fn kubernetes_network_policies_through_check() {
    table("control/tests/golden/kubernetes", &[
        ("frontend on 80 from anywhere", vec!["--to", "shop/frontend-1", "--from-ip", "192.0.2.1", "--plaintext", "--port", "80"], 0, "ALLOW default/shop/knp.default.web-ports/ingress[0]", ""),
        ("frontend on 443", vec!["--to", "shop/frontend-1", "--from-ip", "192.0.2.1", "--plaintext", "--port", "443"], 0, "ALLOW", ""),
        ("frontend admin port is locked down", vec!["--to", "shop/frontend-1", "--from-ip", "192.0.2.1", "--plaintext", "--port", "8080"], 1, "DENY tier/default", ""),
        ("productpage from the ingress gateway on its named port", vec!["--to", "bookinfo/productpage-1", "--from", "istio-system/istio-ingressgateway-1", "--port", "9080"], 0, "ALLOW default/bookinfo/knp.default.productpage-from-ingress/ingress[0]", ""),
        ("productpage from the gateway on another port", vec!["--to", "bookinfo/productpage-1", "--from", "istio-system/istio-ingressgateway-1", "--port", "9999"], 1, "DENY", ""),
        ("productpage from reviews", vec!["--to", "bookinfo/productpage-1", "--from", "bookinfo/reviews-1", "--port", "9080"], 1, "DENY", ""),
        ("productpage from istiod (not the gateway)", vec!["--to", "bookinfo/productpage-1", "--from", "istio-system/istiod-1", "--port", "9080"], 1, "DENY", ""),
        ("reviews: no policy selects it", vec!["--to", "bookinfo/reviews-1", "--from", "team-b/client-1"], 0, "ALLOW profile", ""),
        ("same namespace allowed", vec!["--to", "team-a/api-1", "--from", "team-a/worker-1"], 0, "ALLOW default/team-a/knp.default.allow-same-namespace/ingress[0]", ""),
        ("other namespace denied", vec!["--to", "team-a/api-1", "--from", "team-b/client-1"], 1, "DENY tier/default", ""),
        ("ipBlock and port range", vec!["--to", "team-a/api-1", "--from-ip", "10.200.1.1", "--plaintext", "--port", "9105"], 0, "ALLOW default/team-a/knp.default.metrics/ingress[0]", ""),
        ("ipBlock except", vec!["--to", "team-a/api-1", "--from-ip", "10.200.9.9", "--plaintext", "--port", "9105"], 1, "DENY", ""),
        ("DoesNotExist keeps the canary out of the metrics policy", vec!["--to", "team-a/api-canary-1", "--from-ip", "10.200.1.1", "--plaintext", "--port", "9105"], 1, "DENY", ""),
    ]);
}

#[test]
fn calico_tiers_through_check() {
    table("control/tests/golden/calico-tiers", &[
        ("web calls the API: security passes, the namespaced policy allows", vec!["--to", "prod/api-1", "--from", "prod/web-1", "--path", "/api/orders"], 0, "ALLOW default/prod/api/ingress[0]", ""),
        ("HTTP paths are enforced", vec!["--to", "prod/api-1", "--from", "prod/web-1", "--path", "/admin"], 1, "DENY tier/default", ""),
        ("prefix on a segment boundary", vec!["--to", "prod/api-1", "--from", "prod/web-1", "--path", "/apiary"], 1, "DENY", ""),
        ("quarantined pod denied in the security tier", vec!["--to", "prod/api-1", "--from", "prod/web-2", "--path", "/api/x"], 1, "DENY security/security.quarantine/ingress[0]", "Deny rule matched"),
        ("monitoring on the named metrics port", vec!["--to", "prod/api-1", "--from", "monitoring/prometheus-1", "--port", "9090"], 0, "ALLOW default/allow-monitoring/ingress[0]", ""),
        ("monitoring on another port", vec!["--to", "prod/api-1", "--from", "monitoring/prometheus-1", "--port", "8080"], 1, "DENY tier/default", ""),
    ]);
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let rows: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--to", "default/nope", "--from-ip", "127.0.0.1"], "no running pod default/nope"),
        (vec!["--to", "default/customer-7c9b8d6f5-x2kqp"], "give --from NAMESPACE/POD or --from-ip IP"),
        (vec!["--to", "customer", "--from-ip", "127.0.0.1"], "--to must be NAMESPACE/POD"),
        (vec!["--to", "default/customer-7c9b8d6f5-x2kqp", "--from-ip", "not-an-ip"], "invalid value"),
    ];
    for (args, message) in rows {
        let (code, _, stderr) = check("tests/fixtures/yaobank", &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn invalid_objects_are_named_and_none_hides_another() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: bad-selector}
spec:
  selector: app == 'x
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: typo, namespace: prod}
spec:
  selecter: app == 'x'
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: http-on-deny}
spec:
  ingress: [{action: Deny, http: {methods: [GET]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-port, namespace: prod}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 70000}]}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: fine}
spec: {selector: app == 'y'}
"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "-f"]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "error: GlobalNetworkPolicy/bad-selector: spec.selector: invalid selector \"app == 'x\": at column 8: unterminated string",
        "error: NetworkPolicy/prod/typo: spec.selecter: unknown field `selecter`",
        "error: GlobalNetworkPolicy/http-on-deny: spec.ingress[0].http: HTTP match is only allowed on Allow rules",
        "error: NetworkPolicy.networking.k8s.io/prod/bad-port: spec.ingress[0].ports[0].port: 70000 is not a port number",
        "4 problem(s) in the inputs",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    // With --skip-invalid, the good policy still compiles.
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "--skip-invalid", "-f"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = config["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fine"]);
}
