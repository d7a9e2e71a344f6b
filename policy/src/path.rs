//! HTTP path normalisation for matching.
//!
//! A path rule must mean the same thing to Krites as to the application behind
//! it, whether or not the user's Envoy normalises paths. Canonical form: query
//! and fragment stripped, percent-decoded exactly once (a decoded `%`, `?` or
//! `#` is written back encoded), `\` read as `/`,
//! `;params` dropped from each segment, empty and `.` segments removed, `..`
//! resolved (never above the root), no trailing `/`. Encodings that different
//! servers read differently are refused instead of guessed: an encoded `/`,
//! `\` or `.`, a NUL or control byte, a `%` that is not a valid escape, an
//! escape that survives one decoding (double encoding), and invalid UTF-8
//! (which includes overlong forms such as `%c0%ae`).

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded '/', '\\', '.' or ';'")]
    EncodedSeparator,
    #[error("path contains a NUL or control character")]
    ControlCharacter,
    #[error("path contains a '%' that is not a valid escape")]
    BadEscape,
    #[error("path is percent-encoded twice")]
    DoubleEncoded,
    #[error("path is not valid UTF-8 once decoded")]
    InvalidUtf8,
}

/// Normalises a request target or a rule path. Borrows when the input is
/// already canonical, which is the common case for real traffic.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = match raw.find(['?', '#']) {
        Some(end) => raw.get(..end).unwrap_or(raw),
        None => raw,
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_once(path)?;
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

/// Plain segments only: nothing to decode, collapse or resolve.
fn is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.len() > 1 && bytes.last() == Some(&b'/') {
        return false;
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~' | b'.' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@');
    if !bytes.iter().all(|&b| plain(b)) {
        return false;
    }
    // No empty, `.` or `..` segments (the first split item is the empty root).
    path.split('/').skip(1).all(|seg| !seg.is_empty() && seg != "." && seg != "..") || path == "/"
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_once(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let decoded = hi << 4 | lo;
            // `;` too: servers disagree on whether an encoded one starts parameters.
            if matches!(decoded, b'/' | b'\\' | b'.' | b';') {
                return Err(PathError::EncodedSeparator);
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathError::ControlCharacter);
    }
    // An escape left after one decoding is read differently by a server that
    // decodes twice.
    if out.windows(3).any(|w| matches!(w, [b'%', a, b] if hex(*a).is_some() && hex(*b).is_some())) {
        return Err(PathError::DoubleEncoded);
    }
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)
}

fn resolve_segments(decoded: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        // Servlet-style path parameters: `/admin;jsessionid=x` is `/admin`.
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        // Characters that mean something in a raw path stay encoded, so that
        // the canonical form is itself canonical (normalising it is a no-op).
        for c in s.chars() {
            match c {
                '%' => out.push_str("%25"),
                '?' => out.push_str("%3F"),
                '#' => out.push_str("%23"),
                c => out.push(c),
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether a request target (or a rule path) names a directory: its last
/// segment is empty, `.` or `..` (`/healthz/`, `/a/.`, `/a/b/..`). The
/// canonical form drops that trailing `/`, so an `exact` match compares it
/// separately: to many servers `/healthz/` is another resource than
/// `/healthz`, and Calico and Istio match exact paths exactly. Envoy's own
/// normalisation (RFC 3986 dot segments) keeps the slash too.
pub fn names_directory(raw: &str) -> bool {
    let path = match raw.find(['?', '#']) {
        Some(end) => raw.get(..end).unwrap_or(raw),
        None => raw,
    };
    let last = path.rsplit(['/', '\\']).next().unwrap_or("");
    let last = last.split(';').next().unwrap_or("");
    matches!(last, "" | "." | "..")
}

/// The form an `exact` rule path is kept in: canonical, plus the trailing
/// `/` when it names a directory (the root is just `/`).
pub fn exact_form(canonical: &str, directory: bool) -> String {
    if directory && canonical != "/" {
        format!("{canonical}/")
    } else {
        canonical.to_string()
    }
}

/// Does the exact rule path `exact` (see [`exact_form`]) name the request
/// path `canonical` (normalised), which names a directory or not?
pub fn exact_matches(exact: &str, canonical: &str, directory: bool) -> bool {
    if directory && canonical != "/" {
        exact.len() == canonical.len() + 1 && exact.starts_with(canonical) && exact.ends_with('/')
    } else {
        exact == canonical
    }
}

/// Does `path` (normalised) fall under `prefix` (normalised)? Only on segment
/// boundaries: `/pub` covers `/pub` and `/pub/x`, not `/public`.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn normalisation_table() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin"),
            ("/admin?x=1", "/admin"),
            ("/admin#frag", "/admin"),
            ("/admin?x=/../y", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/../../admin", "/admin"), // never above the root
            ("/a/b/..", "/a"),
            ("/a/b/../..", "/"),
            ("/%61dmin", "/admin"),
            ("/%41DMIN", "/ADMIN"),
            ("/ADMIN", "/ADMIN"), // case is significant
            ("/admin;x", "/admin"),
            ("/admin;x/y", "/admin/y"),
            ("/public;/../admin", "/admin"),
            ("/a\\b", "/a/b"),
            ("/x\\..\\admin", "/admin"),
            ("/caf%C3%A9", "/café"),
            ("/a%20b", "/a b"),
            ("/a.b/c..d/...", "/a.b/c..d/..."),
            ("/100%25", "/100%25"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%23b", "/a%23b"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize(raw).as_deref(), Ok(*want), "normalize({raw:?})");
            // Idempotent.
            assert_eq!(normalize(want).as_deref(), Ok(*want), "normalize(normalize({raw:?}))");
        }
        let bad: &[(&str, PathError)] = &[
            ("admin", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("?/admin", PathError::NotAbsolute),
            ("/admin%2f..", PathError::EncodedSeparator),
            ("/admin%2F..", PathError::EncodedSeparator),
            ("/%2e%2e/admin", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/admin%3bx", PathError::EncodedSeparator),
            ("/admin%00", PathError::ControlCharacter),
            ("/adm\0in", PathError::ControlCharacter),
            ("/a%0ab", PathError::ControlCharacter),
            ("/%", PathError::BadEscape),
            ("/%zz", PathError::BadEscape),
            ("/%4", PathError::BadEscape),
            ("/%2561dmin", PathError::DoubleEncoded),
            ("/%252e%252e/admin", PathError::DoubleEncoded),
            ("/%c0%ae%c0%ae/admin", PathError::InvalidUtf8), // overlong '.'
            ("/%ff", PathError::InvalidUtf8),
        ];
        for (raw, want) in bad {
            assert_eq!(normalize(raw), Err(*want), "normalize({raw:?})");
        }
    }

    #[test]
    fn exact_paths_keep_their_trailing_slash() {
        // (rule, request, matches)
        let cases: &[(&str, &str, bool)] = &[
            ("/healthz", "/healthz", true),
            ("/healthz", "/healthz/", false),
            ("/healthz", "/healthz?x=1", true),
            ("/healthz", "/healthz/?x=1", false),
            ("/healthz", "/healthz/.", false),
            ("/healthz", "/healthz//", false),
            ("/healthz", "/healthz/;x", false),
            ("/healthz", "/healthz;x", true),
            ("/healthz", "//healthz", true),
            ("/healthz", "/x/../healthz", true),
            ("/healthz", "/healthz\\", false),
            ("/healthz/", "/healthz/", true),
            ("/healthz/", "/healthz", false),
            ("/healthz/", "/healthz/x/..", true),
            ("/", "/", true),
            ("/", "//", true),
            ("/", "/a/..", true),
            ("/a", "/a/b/..", false),
        ];
        for (rule, request, want) in cases {
            let rule_form = exact_form(&normalize(rule).unwrap(), names_directory(rule));
            let canonical = normalize(request).unwrap();
            let got = exact_matches(&rule_form, &canonical, names_directory(request));
            assert_eq!(got, *want, "exact {rule:?} against {request:?}");
        }
    }

    #[test]
    fn prefix_on_segment_boundaries() {
        let cases: &[(&str, &str, bool)] = &[
            ("/pub", "/pub", true),
            ("/pub/x", "/pub", true),
            ("/public", "/pub", false),
            ("/pub", "/", true),
            ("/", "/", true),
            ("/", "/pub", false),
            ("/a/b/c", "/a/b", true),
            ("/a/bc", "/a/b", false),
        ];
        for (path, prefix, want) in cases {
            assert_eq!(has_prefix(path, prefix), *want, "{path:?} under {prefix:?}");
        }
    }
}
