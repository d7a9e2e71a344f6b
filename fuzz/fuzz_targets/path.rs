//! Path normalisation on arbitrary request targets.
//!
//! Never panics. When a path normalises: the result is a fixed point; it starts
//! with `/`, has no empty, `.` or `..` segment (and none appears if a server
//! percent-decodes it once more), no `\`, `;`, `?` or `#`; appending `/.`,
//! `/x/..`, a query or a fragment changes nothing; and prefix matching holds
//! on segment boundaries.
#![no_main]

use krites_policy::path::{has_prefix, normalize};
use libfuzzer_sys::fuzz_target;

/// Percent-decodes every valid escape (what a lenient server would do).
fn decode_all(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn check_canonical(raw: &str, n: &str) {
    assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
    assert!(n == "/" || !n.ends_with('/'), "{raw:?} -> {n:?}: trailing slash");
    for seg in n.split('/').skip(1) {
        assert!(n == "/" || (!seg.is_empty() && seg != "." && seg != ".."), "{raw:?} -> {n:?}: segment {seg:?}");
    }
    assert!(!n.contains(['\\', ';', '?', '#']), "{raw:?} -> {n:?}");
    // Decoding the canonical form again cannot produce a dot segment.
    let decoded = decode_all(n);
    for seg in decoded.split(|&b| b == b'/' || b == b'\\') {
        let seg = seg.split(|&b| b == b';').next().unwrap_or(&[]);
        assert!(seg != b"." && seg != b"..", "{raw:?} -> {n:?} decodes to a dot segment");
    }
    // Fixed point.
    assert_eq!(normalize(n).as_deref(), Ok(n), "normalising {n:?} (from {raw:?}) again changes it");
    // Prefixes on segment boundaries.
    assert!(has_prefix(n, "/"));
    assert!(has_prefix(n, n));
    let mut at = 0;
    while let Some(i) = n[at + 1..].find('/') {
        let prefix = &n[..at + 1 + i];
        assert!(has_prefix(n, prefix), "{n:?} under {prefix:?}");
        at += 1 + i;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let result = normalize(raw);
    if let Ok(n) = &result {
        check_canonical(raw, n);
    }
    if raw.contains(['?', '#']) {
        return;
    }
    // Query and fragment never matter.
    assert_eq!(normalize(&format!("{raw}?a=/../admin")), result, "query changed {raw:?}");
    assert_eq!(normalize(&format!("{raw}#/../admin")), result, "fragment changed {raw:?}");
    // Dot segments appended after a separator are resolved away.
    if raw.starts_with('/') {
        for suffix in ["/.", "/x/..", "//", "\\."] {
            let longer = format!("{raw}{suffix}");
            assert_eq!(normalize(&longer).ok(), result.clone().ok(), "{longer:?} vs {raw:?}");
        }
        // Under a jail directory, only a literal `..` can leave it.
        let jailed = format!("/jail/{raw}");
        if let Ok(n) = normalize(&jailed) {
            if !raw.contains("..") {
                assert!(has_prefix(&n, "/jail"), "{jailed:?} -> {n:?} escapes /jail without a literal '..'");
            }
        }
    }
});
