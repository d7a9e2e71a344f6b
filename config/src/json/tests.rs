//! The reader against JSON's grammar, table-driven; and against serde_json on
//! arbitrary values (the reader replaced it, so it must read what it read).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

fn read(text: &str) -> Result<Json> {
    let mut r = Reader::new(text.as_bytes());
    let v = r.value()?;
    r.finish()?;
    Ok(v)
}

#[test]
fn accepts_json() {
    let s = |v: &str| Json::String(v.to_string());
    let rows: Vec<(&str, Json)> = vec![
        ("null", Json::Null),
        (" true ", Json::Bool(true)),
        ("\tfalse\r\n", Json::Bool(false)),
        ("0", Json::Number(0.0)),
        ("-0", Json::Number(-0.0)),
        ("12.5e2", Json::Number(1250.0)),
        ("1E-2", Json::Number(0.01)),
        ("-3.25E+1", Json::Number(-32.5)),
        (r#""""#, s("")),
        (r#""plain ascii""#, s("plain ascii")),
        (r#""\" \\ \/ \b \f \n \r \t""#, s("\" \\ / \u{8} \u{c} \n \r \t")),
        (r#""caf\u00e9 \u00E9""#, s("café é")),
        (r#""é raw""#, s("é raw")),
        (r#""\ud83d\ude00 smile""#, s("😀 smile")),
        (r#""a\u0000b""#, s("a\u{0}b")),
        ("[]", Json::Array(vec![])),
        ("[1, [2], {}]", Json::Array(vec![Json::Number(1.0), Json::Array(vec![Json::Number(2.0)]), Json::Object(vec![])])),
        (
            r#"{"b": 1, "a": "x"}"#,
            Json::Object(vec![("b".to_string(), Json::Number(1.0)), ("a".to_string(), s("x"))]),
        ),
        (r#"{"\u0061": null}"#, Json::Object(vec![("a".to_string(), Json::Null)])),
    ];
    for (text, want) in rows {
        match read(text) {
            Ok(got) => assert_eq!(got, want, "{text}"),
            Err(e) => panic!("{text}: {e}"),
        }
    }
}

#[test]
fn rejects_what_is_not_json() {
    // (text, a fragment of the problem, line, column)
    let rows: &[(&[u8], &str, usize, usize)] = &[
        (b"", "EOF while parsing a value", 1, 0),
        (b"nul", "EOF while parsing a value", 1, 3),
        (b"nulL", "expected value", 1, 4),
        (b"01", "invalid number", 1, 2),
        (b"-", "invalid number", 1, 1),
        (b"1.", "invalid number", 1, 2),
        (b".5", "expected value", 1, 1),
        (b"1e", "invalid number", 1, 2),
        (b"+1", "expected value", 1, 1),
        (b"NaN", "expected value", 1, 1),
        (b"1e400", "number out of range", 1, 5),
        (b"[1,]", "expected value", 1, 4),
        (b"[1 2]", "expected `,` or `]`", 1, 4),
        (b"{\"a\":1,}", "expected a member name", 1, 8),
        (b"{\"a\" 1}", "expected `:`", 1, 6),
        (b"{'a':1}", "expected a member name", 1, 2),
        (b"{\"a\":1", "EOF while parsing an object", 1, 6),
        (b"{\"a\":1,\"a\":2}", "duplicate key `a`", 1, 13),
        (b"{\"b\":1,\"a\":2,\"b\":[]}", "duplicate key `b`", 1, 20),
        (b"\"abc", "EOF while parsing a string", 1, 4),
        (b"\"a\\x\"", "invalid escape", 1, 4),
        (b"\"\\u12\"", "invalid escape", 1, 6),
        (b"\"\\ud800\"", "lone leading surrogate", 1, 7),
        (b"\"\\ud800\\u0041\"", "lone leading surrogate", 1, 13),
        (b"\"\\udc00\"", "lone trailing surrogate", 1, 7),
        (b"\"\xff\"", "invalid unicode code point", 1, 3),
        (b"\"a\nb\"", "control character", 2, 0),
        (b"[\n\n  x]", "expected value", 3, 3),
        (b"true false", "trailing characters", 1, 6),
    ];
    for (text, fragment, line, column) in rows {
        let shown = String::from_utf8_lossy(text);
        let mut r = Reader::new(text);
        let e = match r.value().and_then(|v| r.finish().map(|()| v)) {
            Ok(v) => panic!("{shown:?} read as {v:?}"),
            Err(e) => e,
        };
        assert!(e.problem.contains(fragment), "{shown:?}: {e}");
        assert_eq!((e.line, e.column), (*line, *column), "{shown:?}: {e}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(read(&deep(MAX_DEPTH)).is_ok());
    // Scalars are not levels.
    assert!(read(&format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH))).is_ok());
    let e = read(&deep(MAX_DEPTH + 1)).err().map(|e| e.problem);
    assert_eq!(e.as_deref(), Some("recursion limit exceeded"));
    // Far deeper than any stack allows: refused at the limit, no overflow.
    assert!(read(&deep(1_000_000)).is_err());
}

#[test]
fn objects_name_fields_and_check_them() {
    const FIELDS: &[&str] = &["id", "tags", "note"];
    let read_item = |text: &str, unknown: Unknown| -> Result<(u64, Vec<String>)> {
        let mut r = Reader::new(text.as_bytes());
        let (mut id, mut tags) = (0, Vec::new());
        r.object(FIELDS, 1, unknown, &mut |r, field| {
            match field {
                "id" => id = r.unsigned(10, "an id up to 10")?,
                "tags" => tags = r.list(Reader::string)?,
                _ => drop(r.optional(Reader::string)?),
            }
            Ok(())
        })?;
        r.finish()?;
        Ok((id, tags))
    };
    assert_eq!(read_item(r#"{"tags": ["a", "b"], "id": 3}"#, Unknown::Reject), Ok((3, vec!["a".into(), "b".into()])));
    assert_eq!(read_item(r#"{"id": 3, "note": null}"#, Unknown::Reject).map(|v| v.0), Ok(3));
    assert_eq!(read_item(r#"{"id": 3, "extra": {"x": [1]}}"#, Unknown::Skip).map(|v| v.0), Ok(3));

    let err = |text: &str| match read_item(text, Unknown::Reject) {
        Ok(v) => panic!("{text} read as {v:?}"),
        Err(e) => (e.path(), e.problem),
    };
    assert_eq!(err(r#"{"tags": []}"#), ("id".into(), "missing field `id`".into()));
    assert_eq!(err(r#"{"id": 1, "id": 2}"#), ("id".into(), "duplicate field `id`".into()));
    assert_eq!(err(r#"{"id": 11}"#), ("id".into(), "invalid value: integer `11`, expected an id up to 10".into()));
    assert_eq!(err(r#"{"id": -1}"#), ("id".into(), "invalid value: integer `-1`, expected an id up to 10".into()));
    assert_eq!(err(r#"{"id": 1.0}"#), ("id".into(), "invalid type: floating point `1.0`, expected an id up to 10".into()));
    assert_eq!(err(r#"{"id": "1"}"#), ("id".into(), "invalid type: a string, expected a number".into()));
    assert_eq!(err(r#"{"id": 1, "tags": ["a", 2]}"#), ("tags[1]".into(), "invalid type: a number, expected a string".into()));
    assert_eq!(err(r#"{"id": 1, "tags": null}"#), ("tags".into(), "invalid type: null, expected an array".into()));
    assert_eq!(
        err(r#"{"id": 1, "Id": 2}"#),
        ("Id".into(), "unknown field `Id`, expected one of `id`, `tags`, `note`".into())
    );
    assert_eq!(err(r#"[{"id": 1}]"#), ("".into(), "invalid type: an array, expected an object".into()));
}

#[cfg(not(target_arch = "wasm32"))]
mod against_serde_json {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON value, with strings from all of Unicode and numbers of every shape.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Compact and pretty text read to what serde_json reads, and back.
        #[test]
        fn reads_what_serde_json_reads(value in any_json()) {
            let want = Json::from(value.clone());
            for text in [serde_json::to_string(&value), serde_json::to_string_pretty(&value)] {
                let text = text.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got = read(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                prop_assert_eq!(&got, &want, "{}", text);
                let again = serde_json::to_string(&got).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(read(&again).ok(), Some(want.clone()), "{}", again);
            }
        }

        /// On any bytes the reader and serde_json agree on whether they are JSON.
        #[test]
        fn agrees_with_serde_json_on_what_is_json(bytes in prop::collection::vec(prop_oneof![
            Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b':'), Just(b','), Just(b'\\'),
            Just(b'u'), Just(b'1'), Just(b'-'), Just(b'.'), Just(b'e'), Just(b' '), Just(b'n'), any::<u8>(),
        ], 0..24)) {
            let mut r = Reader::new(&bytes);
            let ours = r.value().and_then(|_| r.finish());
            // serde_json keeps the last of duplicate keys; the reader refuses them.
            if ours.as_ref().is_err_and(|e| e.problem.starts_with("duplicate key")) {
                return Ok(());
            }
            let ours = ours.is_ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok();
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }
}

/// Duplicate keys are found by sorting, so a huge object reads in n log n.
#[test]
fn large_objects_read_quickly() {
    let members: Vec<String> = (0..200_000).map(|i| format!("\"k{i}\":{i}")).collect();
    let text = format!("{{{}}}", members.join(","));
    match read(&text) {
        Ok(Json::Object(m)) => assert_eq!(m.len(), 200_000),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let dup = format!("{{{},\"k7\":0}}", members.join(","));
    assert!(read(&dup).is_err_and(|e| e.problem == "duplicate key `k7`" && e.path() == "k7"));
}
