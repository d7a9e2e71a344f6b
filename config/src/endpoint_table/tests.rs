#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::BTreeMap;

use super::*;

fn spec(ns: &str, sa: &str, labels: &[(&str, &str)], ips: &[&str]) -> EndpointSpec {
    EndpointSpec {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ips: ips.iter().map(|s| s.to_string()).collect(),
    }
}

fn yaobank() -> Vec<EndpointSpec> {
    vec![
        spec("yaobank", "customer", &[("app", "customer"), ("version", "v1")], &["10.0.0.9", "10.0.0.7", "10.0.0.8"]),
        spec("yaobank", "summary", &[("app", "summary")], &["10.0.0.20", "10.0.0.22", "fd00::20"]),
        spec("yaobank", "database", &[("app", "database")], &["::ffff:10.0.1.1", "255.255.255.255", "0.0.0.0"]),
        spec("other", "default", &[], &[]),
    ]
}

fn accounts() -> Vec<ServiceAccountSpec> {
    let account = |ns: &str, name: &str, labels: &[(&str, &str)]| ServiceAccountSpec {
        namespace: ns.to_string(),
        name: name.to_string(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    vec![account("yaobank", "summary", &[("database", "reader"), ("team", "bank")]), account("other", "default", &[])]
}

#[test]
fn round_trips_through_base64_and_back_to_endpoints() {
    let table = EndpointTable::new(&yaobank(), &accounts()).unwrap();
    let decoded = EndpointTable::decode(&table.encode()).unwrap();
    assert_eq!(decoded, table);
    assert_eq!(decoded.service_account_specs(), accounts());
    let specs = decoded.endpoint_specs();
    // Addresses come back sorted, canonical (IPv4-mapped folded), IPv4 first.
    assert_eq!(specs[0].ips, ["10.0.0.7", "10.0.0.8", "10.0.0.9"]);
    assert_eq!(specs[1].ips, ["10.0.0.20", "10.0.0.22", "fd00::20"]);
    assert_eq!(specs[2].ips, ["0.0.0.0", "10.0.1.1", "255.255.255.255"]);
    assert_eq!(specs[3].ips, Vec::<String>::new());
    for (got, want) in specs.iter().zip(yaobank()) {
        assert_eq!((&got.namespace, &got.service_account, &got.labels), (&want.namespace, &want.service_account, &want.labels));
    }
    assert_eq!(table.address_count(), 9);
}

#[test]
fn consecutive_addresses_make_one_run_and_strings_are_written_once() {
    let ips: Vec<String> = (0..200u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i).to_string()).collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let big = spec("payments", "ledger", &[("app", "ledger")], &refs);
    let table = EndpointTable::new(&[big.clone(), spec("payments", "ledger", &[("app", "ledger-v2")], &["10.0.1.0"])], &[]).unwrap();
    assert_eq!(table.groups()[0].v4_runs(), [Ipv4Run { first: 0x0a00_0000, count: 200 }]);
    let bytes = table.to_bytes();
    // format, 5 strings (~30 bytes), 2 groups of ~10 bytes.
    assert!(bytes.len() < 64, "{} bytes", bytes.len());
    assert_eq!(bytes.windows(8).filter(|w| w == b"payments").count(), 1, "\"payments\" once");
    let json = serde_json::to_string(&vec![big]).unwrap();
    assert!(json.len() > 20 * bytes.len(), "JSON {} bytes, table {}", json.len(), bytes.len());
}

#[test]
fn an_address_that_does_not_parse_is_named() {
    let err = EndpointTable::new(&[spec("a", "b", &[], &["10.0.0.1", "10.0.0.256"])], &[]).unwrap_err();
    assert_eq!(err.to_string(), "address \"10.0.0.256\" is not an IP address");
}

/// Each damaged table is refused with its reason, never read as something else.
#[test]
fn damaged_tables_are_refused() {
    let good = EndpointTable::new(&yaobank(), &accounts()).unwrap().to_bytes();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    // One group "ns"/"sa" (strings 0, 1), labels given as raw bytes.
    let one_group = |labels: &[u8], rest: &[u8]| {
        let mut b = vec![1, 3, 2, b'n', b's', 2, b's', b'a', 1, b'k', 1, 0, 1];
        b.extend_from_slice(labels);
        b.extend_from_slice(rest);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "at byte 0: the table ends inside a number"),
        ("another format", with(&|b| b[0] = 2), "format 2 is not the table format this build reads (1)"),
        ("truncated", good[..good.len() - 1].to_vec(), "the table ends"),
        ("trailing bytes", with(&|b| b.push(0)), "bytes follow the last group"),
        ("a forged count", vec![1, 0xff, 0xff, 0xff, 0x0f], "at byte 1: a count of 33554431 with 0 bytes left"),
        ("an overlong number", vec![1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02], "does not fit 64 bits"),
        ("not UTF-8", vec![1, 1, 2, 0xc3, 0x28, 0], "at byte 3: a string is not UTF-8"),
        ("a string out of range", one_group(&[1, 2, 3], &[0, 0, 0]), "group 0: a label value is string 3; the table has 3"),
        ("label keys repeated", one_group(&[2, 2, 0, 2, 1], &[0, 0, 0]), "group 0: label keys must ascend and be unique"),
        ("an IPv4 run past the end", one_group(&[0], &[1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0]), "group 0: an IPv4 run goes past 255.255.255.255"),
        ("a service account's string out of range", vec![1, 1, 1, b'x', 0, 1, 0, 9, 0], "service account 0: the name is string 9; the table has 1"),
        ("a service account's labels unordered", vec![1, 2, 1, b'b', 1, b'a', 0, 1, 0, 0, 2, 0, 0, 1, 0], "service account 0: label keys must ascend and be unique: \"a\" after \"b\""),
        ("an IPv4 run of every address", one_group(&[0], &[1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0]), "group 0: an IPv4 run of all 2^32 addresses"),
        ("IPv6 repeated", one_group(&[0], &[0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), "group 0: IPv6 addresses must ascend and be unique"),
    ];
    for (name, bytes, want) in cases {
        match EndpointTable::from_bytes(&bytes) {
            Ok(t) => panic!("{name}: read as {t:?}"),
            Err(e) => assert!(e.to_string().contains(want), "{name}: {e}"),
        }
    }
    assert_eq!(EndpointTable::decode("not base64!").unwrap_err().to_string().split(':').next(), Some("not base64"));
    // A well-formed group of the helper reads back.
    let t = EndpointTable::from_bytes(&one_group(&[0], &[1, 10, 0, 0, 0])).unwrap();
    assert_eq!(t.groups()[0].v4_runs(), [Ipv4Run { first: 10, count: 1 }]);
}

/// Any bytes: an error or a table, never a panic; a table read back from
/// bytes encodes to those same bytes when it round-trips at all.
#[cfg(not(target_arch = "wasm32"))]
mod arbitrary {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(t) = EndpointTable::from_bytes(&bytes) {
                let again = EndpointTable::from_bytes(&t.to_bytes()).unwrap();
                prop_assert_eq!(again, t);
            }
        }

        #[test]
        fn tables_of_random_endpoints_round_trip(groups in proptest::collection::vec((0u8..4, proptest::collection::vec(any::<u32>().prop_map(|a| a % 4096), 0..40)), 0..8)) {
            let specs: Vec<EndpointSpec> = groups.iter().enumerate().map(|(i, (ns, ips))| EndpointSpec {
                namespace: format!("ns{ns}"),
                service_account: "sa".to_string(),
                labels: [("g".to_string(), i.to_string())].into_iter().collect(),
                ips: ips.iter().map(|&a| Ipv4Addr::from(0x0a00_0000 + a).to_string()).collect(),
            }).collect();
            let table = EndpointTable::new(&specs, &[]).unwrap();
            let back = EndpointTable::decode(&table.encode()).unwrap().endpoint_specs();
            for (got, want) in back.iter().zip(&specs) {
                let mut ips: Vec<u32> = want.ips.iter().map(|s| u32::from(s.parse::<Ipv4Addr>().unwrap())).collect();
                ips.sort_unstable();
                ips.dedup();
                let got_ips: Vec<u32> = got.ips.iter().map(|s| u32::from(s.parse::<Ipv4Addr>().unwrap())).collect();
                prop_assert_eq!(got_ips, ips);
                prop_assert_eq!(&got.labels, &want.labels);
            }
        }
    }
}

#[test]
fn base64_round_trips_every_length_and_refuses_what_is_not_canonical() {
    for len in 0..12u8 {
        let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(97).wrapping_add(200)).collect();
        let table = EndpointTable { strings: vec![String::from_utf8_lossy(&bytes).into_owned()], groups: Vec::new(), service_accounts: Vec::new() };
        let text = table.encode();
        assert_eq!(text.len() % 4, 0);
        assert_eq!(crate::base64::decode(text.as_bytes()).unwrap(), table.to_bytes(), "{len} bytes");
    }
    assert_eq!(crate::base64::decode(b"").unwrap(), Vec::<u8>::new());
    assert_eq!(crate::base64::decode(b"AQID").unwrap(), [1, 2, 3]);
    assert_eq!(crate::base64::decode(b"AQI=").unwrap(), [1, 2]);
    assert_eq!(crate::base64::decode(b"AQ==").unwrap(), [1]);
    for (text, want) in [
        ("AQI", "not a multiple of 4"),
        ("AQ-D", "'-' at 2 is not a base64 character"),
        ("AQ==AQID", "'=' at 2 is not a base64 character"),
        ("A===", "'=' at 1 is not a base64 character"),
        ("AR==", "non-zero bits before the padding at 0"),
        ("AQJ=", "non-zero bits before the padding at 0"),
    ] {
        let err = crate::base64::decode(text.as_bytes()).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
}
