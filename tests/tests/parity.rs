//! `control compile` output, loaded by the filter in real Envoy, decides every
//! tutorial request exactly as `control check` does: one engine, two hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use krites_control::check::{self, Source};
use krites_control::compile::{compile, Options};
use krites_control::inventory::Inventory;
use krites_control::manifests;
use krites_policy::Verdict;
use krites_testbed::yaobank::{tutorial_steps, Bank, Client, Credential, Target, INGRESS_IP};
use krites_testbed::{module_path, workspace_root};

const CUSTOMER: &str = "customer-7c9b8d6f5-x2kqp";
const SUMMARY: [&str; 2] = ["summary-5f6d8b9c7d-4hzlt", "summary-5f6d8b9c7d-q8wmn"];
const DATABASE: &str = "database-6d4b9f8c5b-vm7rs";
const ATTACK: &str = "attack-86b7c5d9f4-zk2p9";

fn pod(name: &str) -> check::Target {
    check::Target::Pod("default".to_string(), name.to_string())
}

#[test]
fn envoy_and_control_check_agree_on_every_tutorial_request() {
    let inputs = workspace_root().join("tests/fixtures/yaobank");
    let inv = Inventory::from_manifests(&manifests::load(&[inputs]).unwrap());
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
    let config = serde_json::to_string(&compile(&inv, &Options::default()).unwrap().config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bank = Bank::start(dir.path(), &module_path(), &config).unwrap();
    for step in tutorial_steps() {
        let target = bank.target(step.to);
        let to = match step.to {
            Target::Customer => pod(CUSTOMER),
            Target::Summary(i) => pod(SUMMARY[i]),
            Target::Database => pod(DATABASE),
        };
        let from = match step.from {
            Client::Ingress => Source::Address(INGRESS_IP.into()),
            Client::Customer => Source::Pod("default".into(), CUSTOMER.into()),
            Client::Summary(i) => Source::Pod("default".into(), SUMMARY[i].into()),
            Client::Attack => Source::Pod("default".into(), ATTACK.into()),
        };
        let principal = match (step.from, step.credential) {
            (Client::Ingress, _) => Some("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account".to_string()),
            (_, Credential::Stolen(sa)) => Some(format!("spiffe://cluster.local/ns/default/sa/{sa}")),
            _ => None,
        };
        let plaintext = step.credential == Credential::Plaintext;
        let port = if plaintext { target.plain_addr().port() } else { target.mtls_addr().port() };
        let req = check::Request {
            to,
            from,
            principal,
            plaintext,
            method: step.method.to_string(),
            path: step.path.to_string(),
            port: Some(port),
            trust_domain: "cluster.local".into(),
        };
        let outcome = check::check(&inv, &req).unwrap();
        let status = bank.send(&step).unwrap().status;
        let envoy = if status == 403 { Verdict::Deny } else { Verdict::Allow };
        assert_eq!(envoy, outcome.verdict, "{}: Envoy answered {status}, control check said\n{}", step.title, outcome.report);
        assert_eq!(status, step.with_policy, "{}", step.title);
    }
}
