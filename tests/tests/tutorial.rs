//! The YAO Bank tutorial end to end, in real Envoys running the built module:
//! every step's status code, the 403's shape, the stats and the denial logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use krites_testbed::yaobank::{tutorial_steps, Bank, POLICY_CONFIG};
use krites_testbed::{module_path, EcdsOutcome};

#[test]
fn yaobank_tutorial_in_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let bank = Bank::start(dir.path(), &module_path(), POLICY_CONFIG).unwrap();
    for s in bank.sidecars() {
        assert_eq!(s.initial_ecds(), Some(EcdsOutcome::Accepted), "{} loaded the config", s.name());
    }
    for step in tutorial_steps() {
        let resp = bank.send(&step).unwrap();
        assert_eq!(resp.status, step.with_policy, "{}: {resp:?}", step.title);
        if resp.status == 403 {
            // The client learns nothing about the policy.
            assert_eq!(resp.body, "RBAC: access denied", "{}", step.title);
            assert!(!resp.body.contains("database") && !resp.body.contains("tier"));
        } else {
            assert!(resp.body.starts_with("ok "), "{}: the app answered: {resp:?}", step.title);
        }
    }

    // Stats: the database saw 4 allowed (2 replicas, plaintext, harmless XFCC)
    // and 7 denied requests; 3 of them with summary's stolen certificate from
    // the attack pod, whose address the config doesn't carry (no rule needs it).
    let db = &bank.database;
    let stat = |name: &str| db.stat(&format!("wasmcustom.{name}")).unwrap();
    assert_eq!(stat("krites_allowed_total"), 4);
    assert_eq!(stat("krites_denied_total"), 7);
    assert_eq!(stat("krites_reason_tier_default_deny_total"), 7);
    assert_eq!(stat("krites_reason_allow_rule_total"), 4);
    assert_eq!(stat("krites_identity_unknown_address_total"), 3);
    assert_eq!(stat("krites_identity_mismatch_total"), 0);
    // One compilation per Wasm VM (Envoy's main thread and each worker).
    assert!(stat("krites_config_loads_total") >= 1);
    assert_eq!(stat("krites_config_errors_total"), 0);
    assert_eq!(stat("krites_config_policies"), 1);
    assert_eq!(stat("krites_config_rules"), 1);
    assert!(stat("krites_config_revision") > 0);
    // Prometheus names, as Istio exports them.
    let prom = db.prometheus().unwrap();
    assert!(prom.contains("krites_denied_total{} 7"), "{prom}");

    // The customer denied one POST; nothing else.
    let customer_denied = bank.customer.stat("wasmcustom.krites_denied_total").unwrap();
    assert_eq!(customer_denied, 1);

    // The log explains the stolen-certificate denial: which factor failed.
    let line = db
        .wait_for_log("certificate says default/summary but no known pod owns 127.0.0.66", Duration::from_secs(5))
        .unwrap();
    assert!(line.contains("DENY tier/default"), "{line}");
    assert!(line.contains("PUT"), "{line}");
    // The access log carries the denial reason for operators.
    let access = db.access_log().unwrap();
    assert!(access.contains("krites_access_denied:tier_default_deny"), "{access}");
}
