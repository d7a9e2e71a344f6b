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
fn network_sets_through_check() {
    table("control/tests/golden/calico-network-sets", &[
        ("the shop's office (a NetworkSet of the policy's namespace)", vec!["--to", "shop/api-1", "--from-ip", "192.0.2.10", "--plaintext"], 0, "ALLOW default/shop/api/ingress[0]", "in sets: NetworkSet/shop/office"),
        ("only GET from the office", vec!["--to", "shop/api-1", "--from-ip", "192.0.2.10", "--plaintext", "--method", "POST"], 1, "DENY tier/default", ""),
        ("the partners' office by its namespace's labels", vec!["--to", "shop/api-1", "--from-ip", "192.0.2.70", "--plaintext"], 0, "ALLOW default/shop/api/ingress[2]", "in sets: NetworkSet/partners/office"),
        ("a payment provider's callback (global())", vec!["--to", "shop/api-1", "--from-ip", "198.51.100.7", "--plaintext", "--method", "POST", "--path", "/callbacks/paid"], 0, "ALLOW default/shop/api/ingress[1]", "GlobalNetworkSet/payment-providers"),
        ("over IPv6 too", vec!["--to", "shop/api-1", "--from-ip", "2001:db8:100::9", "--plaintext", "--method", "POST", "--path", "/callbacks/paid"], 0, "ALLOW default/shop/api/ingress[1]", ""),
        ("a provider address also in the threat feed: either set matches, the Deny first", vec!["--to", "shop/api-1", "--from-ip", "198.51.100.200", "--plaintext", "--path", "/callbacks/paid"], 1, "DENY security/security.block-threats/ingress[0]", "GlobalNetworkSet/payment-providers, GlobalNetworkSet/threat-feed"),
        ("a feed address with a mesh certificate is still denied", vec!["--to", "shop/api-1", "--from-ip", "203.0.113.66", "--principal", "spiffe://cluster.local/ns/shop/sa/batch"], 1, "DENY security/security.block-threats/ingress[0]", ""),
        ("a provider outside its paths", vec!["--to", "shop/api-1", "--from-ip", "198.51.100.7", "--plaintext", "--path", "/admin"], 1, "DENY tier/default", ""),
        ("a pod inside the office's CIDR is in the set", vec!["--to", "shop/api-1", "--from", "shop/batch-1"], 0, "ALLOW default/shop/api/ingress[0]", "in sets: NetworkSet/shop/office"),
        ("an address in no set", vec!["--to", "shop/api-1", "--from-ip", "100.64.0.1", "--plaintext"], 1, "DENY tier/default", ""),
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
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: bad-cidr, labels: {role: x}}
spec: {nets: [10.0.0.0/8, 10.0.0.0/33]}
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkSet
metadata: {name: typo, namespace: prod}
spec: {net: [10.0.0.0/8]}
---
apiVersion: crd.projectcalico.org/v1
kind: StagedGlobalNetworkPolicy
metadata: {name: default.maybe}
spec: {stagedAction: Later, selector: all()}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: bad-port, namespace: prod}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 70000}]}]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: fine}
spec: {selector: app == 'z'}
"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "-f"]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "error: GlobalNetworkPolicy/bad-selector: spec.selector: invalid selector \"app == 'x\": at column 8: unterminated string",
        "error: NetworkPolicy/prod/typo: spec.selecter: unknown field `selecter`",
        "error: GlobalNetworkPolicy/http-on-deny: spec.ingress[0].http: HTTP match is only allowed on Allow rules",
        "error: NetworkPolicy.networking.k8s.io/prod/bad-port: spec.ingress[0].ports[0].port: 70000 is not a port number",
        "error: GlobalNetworkSet/bad-cidr: spec.nets[1]: ",
        "error: NetworkSet/prod/typo: spec.net: unknown field `net`",
        "error: StagedGlobalNetworkPolicy/default.maybe: spec.stagedAction: \"Later\" is not Set or Delete",
        "error: StagedKubernetesNetworkPolicy/prod/bad-port: spec.ingress[0].ports[0].port: 70000 is not a port number",
        "8 problem(s) in the inputs",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    // With --skip-invalid, the good policy still compiles.
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "--skip-invalid", "-f"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = config["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fine"]);
    let staged: Vec<&str> = config["stagedPolicies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(staged, ["fine"]);
}

/// The egress side: the client's sidecar decides on its own egress rules
/// (`EgressPolicy`), then the destination's sidecar on its ingress rules; the
/// first line is the overall verdict (both must allow).
#[test]
fn bookinfo_egress_through_check() {
    let reviews = "bookinfo/reviews-v1-5c5b8b4d8c-8hq2w";
    let reviews3 = "bookinfo/reviews-v3-7c5f6b8d4b-vx9zt";
    let ratings = "bookinfo/ratings-v1-85f5dd9f8b-qz6mn";
    let details = "bookinfo/details-v1-65cfcf56f9-d4xbn";
    let productpage = "bookinfo/productpage-v1-7d6cfb7dfd-5mnq2";
    table("control/tests/golden/bookinfo-egress", &[
        ("reviews -> ratings (Service)", vec!["--from", reviews, "--to-service", "bookinfo/ratings", "--port", "9080"], 0, "ALLOW", "egress  ALLOW default/bookinfo/reviews/egress[0]"),
        ("reviews v3 -> ratings (Service, default port)", vec!["--from", reviews3, "--to-service", "bookinfo/ratings"], 0, "ALLOW", "ingress ALLOW profile"),
        ("reviews -> the ratings pod itself", vec!["--from", reviews, "--to", ratings, "--port", "9080"], 0, "ALLOW", "egress  ALLOW default/bookinfo/reviews/egress[0]"),
        ("reviews -> ratings by ClusterIP", vec!["--from", reviews, "--to-ip", "10.96.120.13", "--port", "9080"], 0, "ALLOW", "through Service bookinfo/ratings"),
        ("reviews -> ratings on another port", vec!["--from", reviews, "--to", ratings, "--port", "9090"], 1, "DENY tier/default: no egress rule matched", ""),
        ("reviews -> details (Service)", vec!["--from", reviews, "--to-service", "bookinfo/details"], 1, "DENY tier/default: no egress rule matched", "egress  DENY"),
        ("reviews -> details (pod)", vec!["--from", reviews, "--to", details], 1, "DENY tier/default: no egress rule matched", "ingress ALLOW profile"),
        ("reviews -> an outside address (exfiltration)", vec!["--from", reviews, "--to-ip", "198.51.100.7", "--port", "443"], 1, "DENY tier/default: no egress rule matched", "only the egress side decides"),
        ("reviews -> a Service with an endpoint its policy does not cover", vec!["--from", reviews, "--to-service", "bookinfo/storage", "--port", "9080"], 1, "DENY tier/default", "to 10.244.2.16:9080"),
        ("productpage (no egress policy) -> details", vec!["--from", productpage, "--to-service", "bookinfo/details"], 0, "ALLOW", "egress  ALLOW profile: no policy selects this workload's egress"),
        ("productpage -> an outside address", vec!["--from", productpage, "--to-ip", "198.51.100.7", "--port", "443"], 0, "ALLOW profile", ""),
        ("details -> its book API (ipBlock)", vec!["--from", details, "--to-ip", "203.0.113.10", "--port", "443"], 0, "ALLOW default/bookinfo/knp.default.details-egress/egress[0]", ""),
        ("details -> the ipBlock's except", vec!["--from", details, "--to-ip", "203.0.113.200", "--port", "443"], 1, "DENY tier/default", ""),
        ("details -> its book API on port 80", vec!["--from", details, "--to-ip", "203.0.113.10", "--port", "80"], 1, "DENY tier/default", ""),
        ("ratings -> DNS over TCP (Kubernetes NetworkPolicy egress)", vec!["--from", ratings, "--to-service", "kube-system/kube-dns", "--port", "53"], 0, "ALLOW", "egress  ALLOW default/bookinfo/knp.default.ratings-egress/egress[1]"),
        ("ratings -> reviews", vec!["--from", ratings, "--to-service", "bookinfo/reviews"], 1, "DENY tier/default", ""),
        ("egress allows, the server's ingress denies", vec!["--from", reviews, "--to", productpage, "--port", "9080"], 1, "DENY", "ingress DENY tier/default"),
        ("ingress only, as before (no client pod)", vec!["--to", productpage, "--from-ip", "192.0.2.1", "--plaintext", "--port", "9080"], 1, "DENY tier/default", ""),
    ]);
    // A Service check names each endpoint whose ingress it read.
    let (_, stdout, _) = check("control/tests/golden/bookinfo-egress", &["--from", productpage, "--to-service", "bookinfo/reviews"]);
    println!("{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ingress ")).count(), 3, "{stdout}");
    assert!(stdout.contains("ingress checked at 3 endpoint pod(s)"), "{stdout}");
}

#[test]
fn egress_bad_input_exits_2() {
    let rows: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--from-ip", "10.0.0.1", "--to-ip", "10.244.1.15"], "need a client pod"),
        (vec!["--from", "bookinfo/reviews-v1-5c5b8b4d8c-8hq2w", "--to-service", "bookinfo/nope"], "no Service bookinfo/nope"),
        (vec!["--from", "bookinfo/reviews-v1-5c5b8b4d8c-8hq2w", "--to-service", "ratings"], "--to-service must be NAMESPACE/NAME"),
        (vec!["--from", "bookinfo/reviews-v1-5c5b8b4d8c-8hq2w"], "give --to NAMESPACE/POD, --to-ip IP or --to-service NAMESPACE/NAME"),
        (vec!["--from", "bookinfo/reviews-v1-5c5b8b4d8c-8hq2w", "--to-ip", "10.244.1.15", "--to-service", "bookinfo/ratings"], "cannot be used with"),
    ];
    for (args, message) in rows {
        let (code, _, stderr) = check("control/tests/golden/bookinfo-egress", &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

const EGRESS_HTTP: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: reviews-1, namespace: bookinfo, labels: {app: reviews}}
  spec: {serviceAccountName: bookinfo-reviews, containers: [{name: reviews, image: reviews, ports: [{containerPort: 9080}]}]}
  status: {phase: Running, podIP: 10.244.1.12}
- apiVersion: v1
  kind: Pod
  metadata: {name: ratings-1, namespace: bookinfo, labels: {app: ratings}}
  spec: {serviceAccountName: bookinfo-ratings, containers: [{name: ratings, image: ratings, ports: [{containerPort: 9080}]}]}
  status: {phase: Running, podIP: 10.244.1.15}
- apiVersion: v1
  kind: Service
  metadata: {name: ratings, namespace: bookinfo}
  spec: {clusterIP: 10.96.120.13, ports: [{name: http, port: 9080, targetPort: 9080}], selector: {app: ratings}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: ratings-b6v2c, namespace: bookinfo, labels: {kubernetes.io/service-name: ratings}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.15], conditions: {ready: true}}]
  ports: [{name: http, port: 9080, protocol: TCP}]
- apiVersion: crd.projectcalico.org/v1
  kind: NetworkPolicy
  metadata: {name: default.reviews, namespace: bookinfo}
  spec:
    selector: app == 'reviews'
    types: [Egress]
    egress:
    - action: Allow
      protocol: TCP
      http: {methods: [GET]}
      destination: {serviceAccounts: {names: [bookinfo-ratings]}}
"#;

/// `http` on egress: Calico refuses it, so control does unless asked; asked,
/// the client's sidecar enforces it (reviews may GET ratings, not POST).
#[test]
fn http_on_egress_needs_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bookinfo.yaml"), EGRESS_HTTP).unwrap();
    let inputs = dir.path().to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "-f", inputs]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error: NetworkPolicy/bookinfo/default.reviews: spec.egress[0].http: Calico accepts HTTP matches on ingress rules only; pass --allow-egress-http"), "{stderr}");
    let (code, _, stderr) = check(inputs, &["--from", "bookinfo/reviews-1", "--to-service", "bookinfo/ratings"]);
    assert_eq!(code, 2, "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "--allow-egress-http", "-f", inputs]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["policies"][0]["egress"][0]["http"], serde_json::json!({"methods": ["GET"]}));
    assert_eq!(config["services"][0]["clusterIPs"], serde_json::json!(["10.96.120.13"]));
    let flag = ["--allow-egress-http", "--from", "bookinfo/reviews-1", "--to-service", "bookinfo/ratings"];
    table(inputs, &[
        ("GET ratings", flag.to_vec(), 0, "ALLOW", "egress  ALLOW default/bookinfo/reviews/egress[0]"),
        ("POST ratings", [&flag[..], &["--method", "POST"]].concat(), 1, "DENY tier/default", "egress  DENY"),
    ]);
}

#[test]
fn bad_egress_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-port, namespace: bookinfo}
spec:
  podSelector: {matchLabels: {app: reviews}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: calico-named-port}
spec:
  selector: app == 'reviews'
  egress: [{action: Allow, protocol: TCP, destination: {ports: [http]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings-b6v2c, namespace: bookinfo, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.15]}, {addresses: [ratings-1.local]}]
ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec: {clusterIP: 10.96.120.13, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: twin, namespace: bookinfo}
spec: {clusterIP: 10.96.120.13, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bad-ip, namespace: bookinfo}
spec: {clusterIPs: [10.96.120.300], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: bookinfo}
spec: {clusterIP: 10.96.120.11, ports: [{name: http, port: 9080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: details-9dz2f, namespace: bookinfo, labels: {kubernetes.io/service-name: details}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.11], conditions: {ready: true}}]
ports: [{name: http, port: 9080}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: reviews, namespace: bookinfo}
spec:
  selector: app == 'reviews'
  egress: [{action: Allow, protocol: TCP, destination: {ports: [9080]}}]
"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "-f"]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "error: NetworkPolicy.networking.k8s.io/bookinfo/named-port: spec.egress[0].ports[0].port: named port \"http\" in an egress rule",
        "error: GlobalNetworkPolicy/calico-named-port: spec.egress[0].destination.ports[0]: named port \"http\"",
        "error: EndpointSlice/bookinfo/ratings-b6v2c: endpoints[1].addresses[0]: \"ratings-1.local\" is not an IP address",
        "error: Service/bookinfo/twin: spec.clusterIPs[0]: 10.96.120.13 is already the ClusterIP of Service/bookinfo/ratings",
        "error: Service/bookinfo/bad-ip: spec.clusterIPs[0]: \"10.96.120.300\" is not an IP address",
        "5 problem(s) in the inputs",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    // Left out, a slice that does not convert takes its Service with it: its
    // endpoints are not all known, and a Service that looked smaller than it
    // is would be allowed on fewer endpoints' merits.
    let out = Command::new(env!("CARGO_BIN_EXE_control")).args(["compile", "--skip-invalid", "-f"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = config["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(services, ["details"], "ratings is left out with its bad slice: {config:#}");
}

/// Staged policies on the YAO Bank tutorial: the first line and the exit code
/// are the enforced verdict; a `staged` line per side gives the verdict with
/// the staged changes applied, and where they differ, the staged policy the
/// difference is counted against.
#[test]
fn staged_policies_through_check() {
    let customer = "default/customer-7c9b8d6f5-x2kqp";
    let summary = "default/summary-5f6d8b9c7d-4hzlt";
    let database = "default/database-6d4b9f8c5b-vm7rs";
    let attack = "default/attack-86b7c5d9f4-zk2p9";
    let inputs = "control/tests/golden/calico-staged";
    // (what, args, exit code (enforced), first line, staged lines in order, difference line or "")
    type Row<'a> = (&'a str, Vec<&'a str>, i32, &'a str, Vec<&'a str>, &'a str);
    let rows: Vec<Row> = vec![
        ("staged Set agrees: customer GETs summary", vec!["--to", summary, "--from", customer], 0, "ALLOW default/summary/ingress[0]",
         vec!["staged  ALLOW default/summary/ingress[0]"], ""),
        ("staged Set would deny a POST the enforced policy allows", vec!["--to", summary, "--from", customer, "--method", "POST"], 0, "ALLOW default/summary/ingress[0]",
         vec!["staged  DENY tier/default"], "staged ingress: DENY staged where ALLOW is enforced: counted against Set StagedGlobalNetworkPolicy default/summary"),
        ("staged Delete of the legacy policy would deny customer -> database", vec!["--to", database, "--from", customer], 0, "ALLOW default/default/legacy-customer-db/ingress[0]",
         vec!["staged  DENY tier/default"], "counted against Delete StagedNetworkPolicy default/default/legacy-customer-db"),
        ("summary -> database: the staged Delete changes nothing for it", vec!["--to", database, "--from", summary], 0, "ALLOW default/database/ingress[0]",
         // summary's own egress is touched too (the staged Set replaces its policy), and agrees.
         vec!["staged  ALLOW default/summary/egress[0]", "staged  ALLOW default/database/ingress[0]"], ""),
        ("staged KNP quarantines the attack pod's ingress", vec!["--to", attack, "--from", customer], 0, "ALLOW profile",
         vec!["staged  DENY tier/default"], "counted against Set StagedKubernetesNetworkPolicy default/default/knp.default.quarantine"),
        ("attack pod's egress: enforced DENY (database ingress) stays the verdict", vec!["--to", database, "--from", attack, "--principal", SUMMARY], 1, "DENY tier/default",
         vec!["staged  DENY tier/default: no egress rule matched", "staged  DENY tier/default: no rule matched"], "staged egress: DENY staged where ALLOW is enforced: counted against Set StagedKubernetesNetworkPolicy"),
    ];
    for (what, args, code, first, staged, difference) in rows {
        let (got, stdout, stderr) = check(inputs, &args);
        println!("{what}:\n{}", stdout.lines().filter(|l| l.starts_with("staged") || l.starts_with("  staged") || l.starts_with("ALLOW") || l.starts_with("DENY")).collect::<Vec<_>>().join("\n"));
        assert_eq!(got, code, "{what}: exit code\n{stdout}{stderr}");
        assert!(stdout.lines().next().unwrap_or("").starts_with(first), "{what}: first line\n{stdout}");
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("staged  ")).collect();
        assert_eq!(lines.len(), staged.len(), "{what}: staged lines\n{stdout}");
        for (line, want) in lines.iter().zip(&staged) {
            assert!(line.starts_with(want), "{what}: {line:?} should start with {want:?}");
        }
        let differences: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  staged ")).collect();
        if difference.is_empty() {
            assert!(differences.is_empty(), "{what}: no difference expected\n{stdout}");
        } else {
            assert!(differences.len() == 1 && differences[0].contains(difference), "{what}: {differences:?} should hold {difference:?}");
        }
    }
    // Nothing staged touches a workload: no staged line at all (the tutorial alone).
    let (code, stdout, _) = check("tests/fixtures/yaobank", &["--to", summary, "--from", customer, "--method", "POST"]);
    assert_eq!(code, 0);
    assert!(!stdout.contains("staged"), "{stdout}");
}
