//! The config parser and compiler: arbitrary bytes into `PolicySet::from_json`.
//!
//! It must never panic, and the filter's entry point (which reads policies
//! after the rest) must agree with it. When the bytes compile: the config's own canonical
//! JSON reads back as the same config and compiles to the same revision; and for workloads the config
//! names, every request its vocabulary suggests gets a decision that keeps the
//! engine's invariants (index = reference walk, provenance, two factors).
#![no_main]

use std::sync::Arc;

use krites_fuzz::{check_decision, sample_requests, sample_workloads, Vocabulary};
use krites_policy::{PluginConfig, PolicySet, WorkloadPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The filter's reader skips each policy and reads it later (the whole
    // text again on an error): the same errors, the same revision.
    let owned = PolicySet::from_json_owned(data.to_vec());
    let whole = PolicySet::from_json(data);
    assert_eq!(owned.as_ref().err(), whole.as_ref().err(), "from_json_owned and from_json disagree on {:?}", String::from_utf8_lossy(data));
    assert_eq!(owned.as_ref().ok().map(PolicySet::revision), whole.as_ref().ok().map(PolicySet::revision));
    let set = match whole {
        Ok(set) => set,
        Err(errors) => {
            // Every error names an object and a field.
            assert!(!errors.0.is_empty(), "an empty error list for {:?}", String::from_utf8_lossy(data));
            for e in &errors.0 {
                assert!(!e.object.is_empty() && !e.field.is_empty() && !e.problem.is_empty(), "{e:?}");
            }
            let _ = errors.to_string();
            return;
        }
    };
    let config = match PluginConfig::from_json(data) {
        Ok(c) => c,
        Err(e) => panic!("compiled, but does not read on its own: {e}"),
    };

    // The canonical JSON (what control emits) reads back as the same config
    // and compiles to the same revision.
    let canonical = serde_json::to_vec(&config).unwrap_or_default();
    match PluginConfig::from_json(&canonical) {
        Ok(again) => assert!(again == config, "the config changes through its canonical JSON"),
        Err(e) => panic!("canonical JSON of a valid config does not read: {e}"),
    }
    match PolicySet::from_json(&canonical) {
        Ok(again) => assert_eq!(again.revision(), set.revision(), "revision changes through canonical JSON"),
        Err(e) => panic!("canonical JSON of a valid config does not compile: {e}"),
    }

    let set = Arc::new(set);
    let vocab = Vocabulary::of(&config);
    let requests = sample_requests(&vocab, 48);
    for workload in sample_workloads(&config, 4) {
        let policy = WorkloadPolicy::new(Arc::clone(&set), &workload);
        assert!(policy.policies_selecting() <= set.policies().len());
        for request in &requests {
            check_decision(&policy, &request.facts());
        }
    }
});
