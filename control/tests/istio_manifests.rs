//! `istio-manifests/` as `kubectl apply -k` would send it: every file parses,
//! every kustomization lists files that exist, the WasmPlugins validate
//! against Istio's CRD schema (kept under tests/fixtures/schemas) and its CEL
//! rules, the control Deployment is locked down, its RBAC is least privilege,
//! and every policy compiles with `control`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};

use serde_json::Value;

use krites_control::compile::{compile, Options};
use krites_control::inventory::Inventory;
use krites_control::manifests::{self, Manifest};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn load(dir: &str) -> Vec<Manifest> {
    manifests::load(&[root().join(dir)]).unwrap()
}

fn of_kind<'a>(all: &'a [Manifest], kind: &str) -> Vec<&'a Value> {
    all.iter().map(|m| &m.value).filter(|v| v["kind"] == kind).collect()
}

/// The `openAPIV3Schema` of the WasmPlugin CRD, as a JSON Schema validator.
fn wasmplugin_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("tests/fixtures/schemas/wasmplugins.extensions.istio.io.crd.yaml")).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    let version = crd["spec"]["versions"].as_array().unwrap().iter().find(|v| v["name"] == "v1alpha1").unwrap();
    jsonschema::validator_for(&version["schema"]["openAPIV3Schema"]).unwrap()
}

/// The CRD's CEL rules, which JSON Schema can't express.
fn cel_rules(plugin: &Value) -> Vec<String> {
    let spec = &plugin["spec"];
    let mut broken = Vec::new();
    let set = ["selector", "targetRef", "targetRefs"].iter().filter(|k| spec.get(**k).is_some()).count();
    if set > 1 {
        broken.push("only one of targetRefs or selector can be set".to_string());
    }
    let url = spec["url"].as_str().unwrap_or("");
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if !["", "http", "https", "oci", "file"].contains(&scheme) {
        broken.push(format!("url must have schema one of [http, https, file, oci]: {url}"));
    }
    broken
}

#[test]
fn every_manifest_parses_and_every_kustomization_resource_exists() {
    let mut kustomizations = 0;
    for dir in ["istio-manifests", "istio-manifests/yaobank", "istio-manifests/calico-crds", "istio-manifests/egress-passthrough"] {
        let k: Value = serde_yaml::from_str(&std::fs::read_to_string(root().join(dir).join("kustomization.yaml")).unwrap()).unwrap();
        assert_eq!(k["kind"], "Kustomization", "{dir}");
        for r in k["resources"].as_array().unwrap() {
            let file = root().join(dir).join(r.as_str().unwrap());
            assert!(file.is_file(), "{dir}: resource {} is missing", file.display());
            let docs = manifests::load(std::slice::from_ref(&file)).unwrap();
            assert!(!docs.is_empty(), "{} holds no object", file.display());
            for d in docs {
                assert!(d.value["apiVersion"].is_string() && d.value["kind"].is_string(), "{}: {:?}", d.source, d.value);
                assert!(d.value.pointer("/metadata/name").is_some(), "{}: no metadata.name", d.source);
            }
        }
        kustomizations += 1;
    }
    assert_eq!(kustomizations, 4);
}

#[test]
fn wasmplugins_validate_against_istios_crd() {
    let schema = wasmplugin_schema();
    let all = load("istio-manifests");
    let plugins = of_kind(&all, "WasmPlugin");
    assert_eq!(plugins.len(), 2);
    for p in &plugins {
        let errors: Vec<String> = schema.iter_errors(p).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", p["metadata"]["name"]);
        assert!(cel_rules(p).is_empty(), "{:?}", cel_rules(p));
        let spec = &p["spec"];
        assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
        assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
        assert_eq!(spec["imagePullPolicy"], "IfNotPresent");
        // Inbound (ingress rules) and outbound (egress rules) listeners alike.
        assert_eq!(spec["match"], serde_json::json!([{"mode": "CLIENT_AND_SERVER"}]));
        assert_eq!(p["metadata"]["namespace"], "istio-system", "mesh-wide: Istio's root namespace");
    }
    let http = plugins.iter().find(|p| p["metadata"]["name"] == "krites").unwrap();
    assert_eq!(http["spec"]["phase"], "AUTHZ");
    // The shipped config is valid for the filter (no policy: allows, as before Krites).
    let config = serde_json::to_vec(&http["spec"]["pluginConfig"]).unwrap();
    krites_policy::PolicySet::from_json(&config).unwrap();
    let network = plugins.iter().find(|p| p["metadata"]["name"] == "krites-peer-address").unwrap();
    assert_eq!(network["spec"]["type"], "NETWORK");
    assert_eq!(network["spec"]["pluginName"], "krites_peer_address");

    // The schema is a real check: broken plugins fail it or the CEL rules.
    let mut bad = (*http).clone();
    bad["spec"]["sha256"] = "not-a-digest".into();
    assert!(!schema.is_valid(&bad), "sha256 pattern");
    let mut bad = (*http).clone();
    bad["spec"]["phase"] = "SOMETIMES".into();
    assert!(!schema.is_valid(&bad), "phase enum");
    let mut bad = (*http).clone();
    bad["spec"]["url"] = "ftp://example/k.wasm".into();
    assert!(!cel_rules(&bad).is_empty(), "url scheme");
}

#[test]
fn control_generated_wasmplugins_validate_too() {
    let schema = wasmplugin_schema();
    let inv = Inventory::from_manifests(&manifests::load(&[root().join("tests/fixtures/yaobank")]).unwrap());
    let module = krites_control::wasmplugin::Module { url: "oci://ghcr.io/krites-project/krites:0.1.0".into(), sha256: Some("a".repeat(64)) };
    let compiled = compile(&inv, &Options::default()).unwrap();
    for p in krites_control::wasmplugin::manifests(&compiled.delivered, &compiled.revision, "istio-system", &module) {
        let errors: Vec<String> = schema.iter_errors(&p).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(cel_rules(&p).is_empty());
    }
}

#[test]
fn every_policy_compiles_with_control() {
    let all = load("istio-manifests/yaobank");
    let inv = Inventory::from_manifests(&all);
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
    let names: Vec<&str> = inv.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["customer", "summary", "database"]);
    compile(&inv, &Options::default()).unwrap();
    // The tutorial's app and attack pod are Deployments (no pods yet): ignored, not errors.
    assert_eq!(inv.ignored.get("Deployment"), Some(&4));
}

#[test]
fn control_runs_locked_down_with_least_privilege() {
    let all = load("istio-manifests");
    let deployment = of_kind(&all, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["args"][0], "run");
    // The Deployment's module digest matches the WasmPlugins'.
    let sha_arg = c["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()?.strip_prefix("--sha256=")).next().unwrap();
    for p in of_kind(&all, "WasmPlugin") {
        assert_eq!(p["spec"]["sha256"], sha_arg);
    }

    let role = of_kind(&all, "ClusterRole")[0];
    let mut grants = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    grants.push(format!("{}/{}:{}", group.as_str().unwrap(), resource.as_str().unwrap(), verb.as_str().unwrap()));
                }
            }
        }
    }
    assert!(grants.iter().all(|g| !g.contains('*')), "no wildcards: {grants:?}");
    // Writes only on WasmPlugins and Events.
    for g in &grants {
        let writes = ["create", "update", "patch", "delete"].iter().any(|v| g.ends_with(&format!(":{v}")));
        if writes {
            assert!(g.starts_with("extensions.istio.io/wasmplugins:") || g.starts_with("events.k8s.io/events:"), "{g}");
        }
    }
    assert!(grants.contains(&"/pods:watch".to_string()) && grants.contains(&"extensions.istio.io/wasmplugins:patch".to_string()));
    assert!(!grants.iter().any(|g| g.starts_with("/secrets")), "no secrets");
    // Egress rules are read against a Service's endpoints: list and watch only.
    for g in ["/services:list", "/services:watch", "discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch"] {
        assert!(grants.contains(&g.to_string()), "{g}: {grants:?}");
    }
    assert!(!grants.iter().any(|g| g.starts_with("/endpoints:")), "EndpointSlices, not the legacy Endpoints");
    // A deleted WasmPlugin is created again (server-side apply of a missing
    // object is a create), foreign edits are watched and replaced.
    for verb in ["create", "update", "watch", "list"] {
        assert!(grants.contains(&format!("extensions.istio.io/wasmplugins:{verb}")), "wasmplugins:{verb}");
    }

    // Leader election: a namespaced Role on the Lease, the least it needs,
    // bound to control's ServiceAccount in its namespace.
    let roles = of_kind(&all, "Role");
    assert_eq!(roles.len(), 1, "one Role (leader election)");
    assert_eq!(roles[0]["metadata"]["namespace"], "krites-system");
    assert_eq!(roles[0]["rules"], serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]));
    assert!(!grants.iter().any(|g| g.starts_with("coordination.k8s.io/")), "no cluster-wide Lease rights");
    let binding = of_kind(&all, "RoleBinding")[0];
    assert_eq!(binding["metadata"]["namespace"], "krites-system");
    assert_eq!(binding["roleRef"]["name"], roles[0]["metadata"]["name"]);
    assert_eq!(binding["subjects"], serde_json::json!([{"kind": "ServiceAccount", "name": "krites-control", "namespace": "krites-system"}]));

    // The Calico API is detected, and Events name the pod.
    assert!(c["args"].as_array().unwrap().iter().any(|a| a == "--calico-api=auto"), "{}", c["args"]);
    let pod_name = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "POD_NAME").expect("POD_NAME");
    assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
}

#[test]
fn calico_crds_include_tier() {
    let all = load("istio-manifests/calico-crds");
    let names: Vec<&str> = of_kind(&all, "CustomResourceDefinition").iter().filter_map(|c| c["metadata"]["name"].as_str()).collect();
    assert!(names.contains(&"tiers.projectcalico.org") && names.contains(&"tiers.crd.projectcalico.org"), "{names:?}");
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(root().join("istio-manifests/calico-crds/kustomization.yaml")).unwrap()).unwrap();
    assert!(k["resources"].as_array().unwrap().iter().any(|r| r == "projectcalico.org_tiers.yaml"), "shipped with the other v3 CRDs");
    let v1: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("istio-manifests/calico-crds/crd.projectcalico.org_tiers.yaml")).unwrap()).unwrap();
    assert_eq!(v1["spec"]["versions"][0]["name"], "v1");
    assert_eq!(v1["spec"]["group"], "crd.projectcalico.org");
}
