//! The compressed form reads back as the plain one, and every way it can be
//! damaged is refused with the reason.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::BTreeMap;

use super::*;
use crate::{EndpointSpec, EndpointTable, PolicySpec, ServiceAccountSpec, CONFIG_VERSION};

const POLICY: &str = r#"{"version": 1, "revision": "r7", "tiers": [{"name": "default"}],
  "policies": [{"name": "allow-customer", "namespace": "yaobank", "tier": "default", "selector": "app == 'summary'",
    "ingress": [{"action": "Allow", "source": {"selector": "app == 'customer'"}}]}],
  "namespaces": [{"name": "yaobank", "labels": {"team": "bank"}}]}"#;

fn config(groups: usize) -> PluginConfig {
    let mut c = PluginConfig::from_json(POLICY.as_bytes()).unwrap();
    c.endpoints = (0..groups)
        .map(|i| EndpointSpec {
            namespace: "yaobank".to_string(),
            service_account: format!("sa-{}", i % 50),
            labels: BTreeMap::from([("app".to_string(), format!("app-{i}"))]),
            ips: (0..8)
                .map(|k| format!("10.{}.{}.{k}", i / 256, i % 256))
                .collect(),
        })
        .collect();
    c.service_accounts = vec![ServiceAccountSpec {
        namespace: "yaobank".to_string(),
        name: "sa-1".to_string(),
        labels: BTreeMap::from([("pci".to_string(), "true".to_string())]),
    }];
    c
}

/// The envelope around a hand-made payload.
fn envelope(payload: &[u8]) -> String {
    let text = crate::base64::encode(&miniz_oxide::deflate::compress_to_vec_zlib(payload, 6));
    format!(r#"{{"version": 1, "compressed": "{text}"}}"#)
}

fn payload(json: &str, table: &[u8]) -> Vec<u8> {
    let mut p = vec![1u8];
    p.extend_from_slice(&(json.len() as u32).to_be_bytes());
    p.extend_from_slice(json.as_bytes());
    p.extend_from_slice(table);
    p
}

fn error(text: &str) -> String {
    PluginConfig::from_json(text.as_bytes())
        .unwrap_err()
        .to_string()
}

#[test]
fn reads_back_as_the_plain_config() {
    for groups in [0, 3, 400] {
        let plain = config(groups);
        let tabled = plain.clone().with_endpoint_table().unwrap();
        for c in [&plain, &tabled] {
            let text = serde_json::to_string(&c.to_compressed_json().unwrap()).unwrap();
            assert_eq!(
                &PluginConfig::from_json(text.as_bytes()).unwrap(),
                c,
                "{groups} groups"
            );
            // The same content: the same digest, whichever form carried it.
            assert_eq!(
                crate::Digest::revision(&PluginConfig::from_json(text.as_bytes()).unwrap()),
                crate::Digest::revision(c)
            );
        }
    }
}

#[test]
fn the_table_travels_as_bytes_and_is_smaller_than_plain() {
    let c = config(2000).with_endpoint_table().unwrap();
    let plain = serde_json::to_vec(&c).unwrap();
    let compressed = serde_json::to_vec(&c.to_compressed_json().unwrap()).unwrap();
    assert!(
        compressed.len() * 2 < plain.len(),
        "{} vs {}",
        compressed.len(),
        plain.len()
    );
    let packed = crate::base64::decode(pack(&c).unwrap().as_bytes()).unwrap();
    let inflated = miniz_oxide::inflate::decompress_to_vec_zlib(&packed).unwrap();
    let table = c.endpoint_table.as_ref().unwrap().to_bytes();
    assert!(inflated.ends_with(&table));
    assert!(!String::from_utf8_lossy(&inflated).contains("endpointTable"));
}

#[test]
fn control_compresses_only_what_is_large() {
    let small = config(3);
    assert_eq!(
        small.to_delivered_json().unwrap(),
        serde_json::to_value(&small).unwrap()
    );
    let large = config(4000);
    assert!(serde_json::to_vec(&large).unwrap().len() >= COMPRESS_FROM_BYTES);
    let delivered = large.to_delivered_json().unwrap();
    assert!(delivered.get("compressed").is_some() && delivered.get("policies").is_none());
    assert_eq!(
        delivered.get("version"),
        Some(&serde_json::json!(CONFIG_VERSION))
    );
}

#[test]
fn damaged_or_hostile_payloads_are_refused_with_the_reason() {
    let good_json = r#"{"version": 1}"#;
    let zeros = vec![0u8; MAX_INFLATED_BYTES + 1];
    let mut bad_checksum = miniz_oxide::deflate::compress_to_vec_zlib(&payload(good_json, &[]), 6);
    if let Some(last) = bad_checksum.last_mut() {
        *last ^= 1;
    }
    let bad_checksum = format!(
        r#"{{"version": 1, "compressed": "{}"}}"#,
        crate::base64::encode(&bad_checksum)
    );
    let table = EndpointTable::new(&config(2).endpoints, &[])
        .unwrap()
        .to_bytes();
    let rows: Vec<(String, &str)> = vec![
        (
            r#"{"version": 1, "compressed": "not base64!"}"#.to_string(),
            "compressed: not base64",
        ),
        (
            r#"{"version": 1, "compressed": "AAAA"}"#.to_string(),
            "compressed: not zlib data, or damaged",
        ),
        (bad_checksum, "the checksum does not match"),
        (envelope(&zeros), "inflates to more than 67108864 bytes"),
        (envelope(&[]), "no format byte"),
        (
            envelope(&[2, 0, 0, 0, 0]),
            "format 2 is not the compressed format this build reads (1)",
        ),
        (envelope(&[1, 0, 0]), "no JSON length"),
        (
            envelope(&[1, 0, 0, 0, 99, b'{', b'}']),
            "the JSON is shorter than its length",
        ),
        (
            envelope(&payload(
                r#"{"version": 1, "policies": [{"name": 5}]}"#,
                &[],
            )),
            "in the compressed document: policies[0].name: invalid type",
        ),
        (
            envelope(&payload("[]", &[])),
            "in the compressed document: must be a JSON object",
        ),
        (
            envelope(&payload(&envelope(&payload(good_json, &[])), &[])),
            "may not be compressed again",
        ),
        (
            envelope(&payload(r#"{"version": 2}"#, &[])),
            "version 2 differs from the envelope's 1",
        ),
        (
            envelope(&payload(
                &format!(
                    r#"{{"version": 1, "endpointTable": "{}"}}"#,
                    crate::base64::encode(&table)
                ),
                &table,
            )),
            "has an `endpointTable` and table bytes",
        ),
        (
            envelope(&payload(good_json, &[1, 5])),
            "the endpoint table after the document",
        ),
        (
            envelope(&payload(good_json, &[7])),
            "format 7 is not the table format",
        ),
    ];
    for (text, want) in rows {
        let got = error(&text);
        assert!(got.contains(want), "{want:?} not in {got:?}");
        assert!(got.starts_with("compressed: "), "{got}");
    }
    // Nothing may sit beside `compressed` but the version: it would be ignored.
    let packed = pack(&config(1)).unwrap();
    let beside = format!(r#"{{"version": 1, "revision": "x", "compressed": "{packed}"}}"#);
    assert!(
        error(&beside).contains("`revision` beside `compressed`"),
        "{}",
        error(&beside)
    );
    let after =
        format!(r#"{{"version": 1, "compressed": "{packed}", "namespaces": [{{"name": "a"}}]}}"#);
    assert!(
        error(&after).contains("`namespaces` beside `compressed`"),
        "{}",
        error(&after)
    );
    // The envelope's version is required as for any document.
    assert!(error(&format!(r#"{{"compressed": "{packed}"}}"#)).contains("missing field `version`"));
    // A well-formed envelope with table bytes reads the table.
    let read = PluginConfig::from_json(envelope(&payload(good_json, &table)).as_bytes()).unwrap();
    assert_eq!(read.endpoint_specs().len(), 2);
}

/// A reader that keeps the policies as text (finding only where each ends)
/// and reads each later reads the same config, plain or compressed, and
/// refuses bad text with `from_json`'s error, at the same place, whether the
/// first error is in a policy or elsewhere.
#[test]
fn policies_kept_as_text_read_as_parsed() {
    let deferring = |text: &str| -> Result<PluginConfig, crate::json::ReadError> {
        let (rest, deferred) = PluginConfig::from_json_deferring_policies(text.as_bytes().to_vec())?;
        let policies = deferred.iter().collect::<Result<Vec<PolicySpec>, _>>()?;
        Ok(PluginConfig { policies, ..rest })
    };
    let good = config(3);
    let plain = serde_json::to_string(&good).unwrap();
    let compressed = good.to_compressed_json().unwrap().to_string();
    let escapes = r#"{"version": 1, "policies": [ {"name": "a\"]}[", "selector": "x == '}'"} , {"name": "b", "order": -1.5e2}]}"#;
    for text in [POLICY.to_string(), plain, compressed, escapes.to_string()] {
        assert_eq!(deferring(&text).unwrap(), PluginConfig::from_json(text.as_bytes()).unwrap(), "{text}");
    }
    let bad = [
        // A policy of the wrong shape, then an endpoint of the wrong shape: the policy's is first.
        r#"{"version": 1, "policies": [{"name": "a"}, {"name": "b", "ingress": [{"action": "allow"}]}],
            "endpoints": [{"namespace": "x"}]}"#,
        // Only in a policy.
        r#"{"version": 1, "policies": [{"name": "a"}, {"name": "b", "types": ["ingress"]}]}"#,
        r#"{"version": 1, "policies": [{"name": "a", "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [70000]}}]}]}"#,
        // Syntax a skip passes over: a bad literal, a bad number, a raw control character, a lone surrogate.
        r#"{"version": 1, "policies": [{"name": "a", "order": tru}]}"#,
        r#"{"version": 1, "policies": [{"name": "a", "order": 01}]}"#,
        "{\"version\": 1, \"policies\": [{\"name\": \"a\tb\"}]}",
        r#"{"version": 1, "policies": [{"name": "a\u0001"}, {"name": "b\udc00"}]}"#,
        // Brackets that do not match, inside and around a policy.
        r#"{"version": 1, "policies": [{"name": "a"]}, {"name": "b"}]}"#,
        r#"{"version": 1, "policies": [{"name": "a"} {"name": "b"}]}"#,
        r#"{"version": 1, "policies": [{"name": "a"}, ]}"#,
        r#"{"version": 1, "policies": [{"name": "a"}"#,
        r#"{"version": 1, "policies": [{"name": "a}]}"#,
        r#"{"version": 1, "policies": ["a", 1, null]}"#,
        r#"{"version": 1, "policies": [{"name": "a", "metadata": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}"#,
        // An error after the policies only.
        r#"{"version": 1, "policies": [{"name": "a"}], "endpoints": [{"namespace": "x"}]}"#,
        r#"{"version": 1, "policies": [{"name": "a"}], "version": 1}"#,
    ];
    for text in bad {
        let whole = PluginConfig::from_json(text.as_bytes()).unwrap_err();
        let read = deferring(text).unwrap_err();
        assert_eq!((read.path(), read.to_string()), (whole.path(), whole.to_string()), "{text}");
        let wrapped = envelope(&payload(text, &[]));
        let whole = PluginConfig::from_json(wrapped.as_bytes()).unwrap_err();
        let read = deferring(&wrapped).unwrap_err();
        assert_eq!((read.path(), read.to_string()), (whole.path(), whole.to_string()), "compressed {text}");
    }
}

/// The revision's encoding is pinned: a filter and a control of different
/// builds must name the same config alike (the digest fed with the policies
/// one at a time is the same as over the whole config).
#[test]
fn the_revision_is_stable_across_builds() {
    let c = config(3);
    assert_eq!(crate::Digest::revision(&c), PINNED_REVISION);
    let mut d = crate::Digest::of_config_with(&PluginConfig { policies: Vec::new(), ..c.clone() }, c.policies.len());
    c.policies.iter().for_each(|p| d.policy(p));
    assert_eq!(d.finish(&c), PINNED_REVISION);
}

/// `Digest::revision(&config(3))` as the builds before policies were read in
/// turn computed it.
const PINNED_REVISION: &str = "e6a0365efc94beab";
