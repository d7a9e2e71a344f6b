//! The shipped module keeps only the exports in `filter/exports.txt` (`make build` drops the
//! rest, issue #15). Envoy skips a callback the module does not export, so a callback the
//! filter implements but the list lacks would silently never run. These tests tie the three
//! together: the filter's source, the list, and the committed module.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `filter/exports.txt`: one name per line, `#` comments.
fn listed() -> BTreeSet<String> {
    std::fs::read_to_string(crate_dir().join("exports.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The proxy-wasm SDK's trait methods and the export that dispatches to each
/// (`proxy-wasm` 0.2, `src/dispatcher.rs`).
const SDK_CALLBACKS: &[(&str, &str)] = &[
    ("on_vm_start", "proxy_on_vm_start"),
    ("on_configure", "proxy_on_configure"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_done", "proxy_on_done"),
    ("on_log", "proxy_on_log"),
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response_headers", "proxy_on_grpc_receive_initial_metadata"),
    ("on_grpc_call_response_message", "proxy_on_grpc_receive"),
    ("on_grpc_call_response_trailers", "proxy_on_grpc_receive_trailing_metadata"),
    ("on_grpc_stream_initial_metadata", "proxy_on_grpc_receive_initial_metadata"),
    ("on_grpc_stream_message", "proxy_on_grpc_receive"),
    ("on_grpc_stream_trailing_metadata", "proxy_on_grpc_receive_trailing_metadata"),
    ("on_grpc_stream_close", "proxy_on_grpc_close"),
    ("on_foreign_function", "proxy_on_foreign_function"),
    ("on_new_connection", "proxy_on_new_connection"),
    ("on_downstream_data", "proxy_on_downstream_data"),
    ("on_downstream_close", "proxy_on_downstream_connection_close"),
    ("on_upstream_data", "proxy_on_upstream_data"),
    ("on_upstream_close", "proxy_on_upstream_connection_close"),
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
];

/// The SDK callbacks the filter's source implements (`fn on_...(` anywhere in `src/`).
fn implemented() -> BTreeSet<&'static str> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(crate_dir().join("src")).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (method, export) in SDK_CALLBACKS {
            if source.contains(&format!("fn {method}(")) {
                found.insert(*export);
            }
        }
    }
    found
}

#[test]
fn every_callback_the_filter_implements_is_kept() {
    let listed = listed();
    let implemented = implemented();
    assert!(implemented.contains("proxy_on_request_headers") && implemented.contains("proxy_on_new_connection"), "{implemented:?}");
    for export in &implemented {
        assert!(listed.contains(*export), "the filter implements {export}, but filter/exports.txt drops it");
    }
    // Kept without an implementation of its own: the SDK's entry points and context
    // bookkeeping, and what the host needs to run the module at all.
    let needed = ["memory", "_initialize", "malloc", "proxy_abi_version_0_2_1", "proxy_on_vm_start", "proxy_on_configure", "proxy_on_context_create", "proxy_on_delete"];
    for export in &listed {
        assert!(implemented.contains(export.as_str()) || needed.contains(&export.as_str()), "filter/exports.txt keeps {export}, which nothing implements");
    }
    for export in needed {
        assert!(listed.contains(export), "filter/exports.txt must keep {export}");
    }
}

/// The export section of a Wasm binary: (name, kind) pairs.
fn exports(module: &[u8]) -> Vec<(String, u8)> {
    fn leb(b: &[u8], i: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = b[*i];
            *i += 1;
            value |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return value;
            }
        }
    }
    assert_eq!(&module[..8], b"\0asm\x01\0\0\0", "a Wasm 1.0 binary");
    let mut i = 8;
    while i < module.len() {
        let id = module[i];
        i += 1;
        let size = leb(module, &mut i);
        let end = i + size;
        if id == 7 {
            let count = leb(module, &mut i);
            return (0..count)
                .map(|_| {
                    let len = leb(module, &mut i);
                    let name = String::from_utf8(module[i..i + len].to_vec()).unwrap();
                    i += len;
                    let kind = module[i];
                    i += 1;
                    leb(module, &mut i);
                    (name, kind)
                })
                .collect();
        }
        i = end;
    }
    Vec::new()
}

#[test]
fn the_committed_module_exports_exactly_the_list() {
    let module = std::fs::read(crate_dir().join("../wasm-out/krites.wasm")).unwrap();
    let got: BTreeSet<String> = exports(&module).into_iter().map(|(name, _)| name).collect();
    assert_eq!(got, listed(), "wasm-out/krites.wasm: run `make build`");
}
