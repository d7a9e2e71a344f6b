//! Selector grammar and semantics, table-driven. Each row: selector, labels, expected.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::Selector;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const POD: &[(&str, &str)] = &[
    ("app", "summary"),
    ("version", "v1"),
    ("tier", "backend"),
    ("projectcalico.org/namespace", "yaobank"),
    ("empty", ""),
    ("contains", "yes"),
    ("quote", "it's"),
];

#[test]
fn evaluation_table() {
    let pod = labels(POD);
    let cases: &[(&str, bool)] = &[
        // empty and trivial
        ("", true),
        ("   ", true),
        ("all()", true),
        ("all( )", true),
        ("global()", true),
        // equality
        ("app == 'summary'", true),
        ("app == \"summary\"", true),
        ("app=='summary'", true),
        ("app == 'Summary'", false), // case-sensitive
        ("missing == 'x'", false),
        ("app != 'summary'", false),
        ("app != 'customer'", true),
        ("missing != 'x'", true), // missing label: != is true
        ("empty == ''", true),
        // has
        ("has(app)", true),
        ("has( app )", true),
        ("has(missing)", false),
        ("!has(missing)", true),
        ("has(projectcalico.org/namespace)", true),
        // sets
        ("app in {'summary', 'customer'}", true),
        ("app in {'customer'}", false),
        ("app in {}", false),
        ("app not in {}", true),
        ("app in {'summary',}", true), // trailing comma
        ("app not in {'summary'}", false),
        ("app notin {'customer'}", true),
        ("app in{'summary'}", true),
        ("missing in {'x'}", false),
        ("missing not in {'x'}", true),
        // string operators
        ("app contains 'umm'", true),
        ("app contains ''", true),
        ("missing contains ''", false),
        ("app starts with 'sum'", true),
        ("app startswith 'sum'", true),
        ("app starts  with 'x'", false),
        ("app ends with 'ary'", true),
        ("app endswith 'ary'", true),
        ("app contains\"umm\"", true),
        ("quote == \"it's\"", true),
        // operator words are label names too
        ("contains contains 'ye'", true),
        ("contains == 'yes'", true),
        // boolean structure and precedence
        ("app == 'summary' && version == 'v1'", true),
        ("app == 'summary' && version == 'v2'", false),
        ("app == 'x' || version == 'v1'", true),
        ("app == 'x' || version == 'v2'", false),
        ("!app == 'x'", true), // `!` binds looser than `==`
        ("!!app == 'summary'", true),
        ("!!!app == 'summary'", false),
        ("! (app == 'summary' && version == 'v1')", false),
        ("app == 'x' && version == 'v1' || tier == 'backend'", true), // && before ||
        ("app == 'x' && (version == 'v1' || tier == 'backend')", false),
        ("(((app == 'summary')))", true),
        ("has(app) && !has(missing) && app in {'summary'} && tier starts with 'back'", true),
        ("\tapp == 'summary'\t", true),
        ("projectcalico.org/namespace == 'yaobank'", true),
    ];
    for (text, want) in cases {
        let sel = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
        assert_eq!(sel.matches(&pod), *want, "{text:?} on {POD:?}");
        // The canonical form re-parses to the same selector.
        let again = Selector::parse(&sel.to_string())
            .unwrap_or_else(|e| panic!("canonical form {:?} of {text:?} should parse: {e}", sel.to_string()));
        assert_eq!(again, sel, "round trip of {text:?}");
    }
}

#[test]
fn parse_errors_point_at_the_column() {
    let cases: &[(&str, usize, &str)] = &[
        ("app ==", 7, "quoted string"),
        ("app == summary", 8, "quoted string"),
        ("app == 'summary", 8, "unterminated"),
        ("app", 4, "operator"),
        ("app === 'x'", 7, "quoted string"),
        ("app = 'x'", 5, "operator"),
        ("app == 'x' &&", 14, "label"),
        ("app == 'x' && && b == 'y'", 15, "label"),
        ("app == 'x' and b == 'y'", 12, "`&&`, `||`"),
        ("(app == 'x'", 12, "`)`"),
        ("app == 'x')", 11, "`&&`, `||`"),
        ("has (app)", 5, "operator"), // no space allowed before `(`
        ("has()", 5, "label"),
        ("has(app", 8, "`)`"),
        ("all(x)", 5, "`)`"),
        ("app in 'x'", 8, "`{`"),
        ("app in {'a' 'b'}", 13, "`,` or `}`"),
        ("app in {'a', b}", 14, "quoted string"),
        ("app == 'x'\n&& b == 'y'", 11, "`&&`, `||`"), // newline is not whitespace
        ("app inx {'a'}", 5, "operator"),
        ("app contains", 13, "quoted string"),
        ("= 'x'", 1, "label"),
        ("!", 2, "label"),
        ("app == 'x' ||", 14, "label"),
        ("app ~= 'x'", 5, "operator"),
    ];
    for (text, column, fragment) in cases {
        match Selector::parse(text) {
            Ok(sel) => panic!("{text:?} should not parse, got {sel:?}"),
            Err(e) => {
                assert_eq!(e.column, *column, "column for {text:?}: {e}");
                assert!(e.message.contains(fragment), "message for {text:?} should mention {fragment:?}: {e}");
            }
        }
    }
}

#[test]
fn limits() {
    let long_label = "a".repeat(513);
    let err = Selector::parse(&format!("{long_label} == 'x'")).err();
    assert!(err.is_some_and(|e| e.message.contains("longer than 512")));
    assert!(Selector::parse(&format!("{} == 'x'", "a".repeat(512))).is_ok());

    let deep = format!("{}a == 'x'{}", "(".repeat(65), ")".repeat(65));
    let err = Selector::parse(&deep).err();
    assert!(err.is_some_and(|e| e.message.contains("nests deeper")));
    let ok = format!("{}a == 'x'{}", "(".repeat(64), ")".repeat(64));
    assert!(Selector::parse(&ok).is_ok());
}

#[test]
fn global_is_detected() {
    let uses = |s: &str| Selector::parse(s).map(|sel| sel.uses_global()).unwrap_or(false);
    assert!(uses("global()"));
    assert!(uses("a == 'b' || !global()"));
    assert!(!uses("all()"));
    assert!(!uses("global == 'x'")); // a label called "global"
}

#[test]
fn canonical_form_is_stable() {
    let cases: &[(&str, &str)] = &[
        ("", "all()"),
        ("app=='a'", "app == 'a'"),
        ("a in {'y','x','x'}", "a in {'x', 'y'}"),
        ("a notin{}", "a not in {}"),
        ("!has(a)", "!has(a)"),
        ("!!!a=='x'", "!a == 'x'"),
        ("!(!a=='x')", "!(!a == 'x')"),
        ("!(a=='x'||b=='y')", "!(a == 'x' || b == 'y')"),
        ("(a=='1'&&b=='2')||c=='3'", "a == '1' && b == '2' || c == '3'"),
        ("(a=='1'||b=='2')||c=='3'", "(a == '1' || b == '2') || c == '3'"),
        ("(a=='1'&&b=='2')&&c=='3'", "(a == '1' && b == '2') && c == '3'"),
        ("a=='1'&&(b=='2'||c=='3')", "a == '1' && (b == '2' || c == '3')"),
        ("q == \"it's\"", "q == \"it's\""),
    ];
    for (text, canonical) in cases {
        let sel = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(sel.to_string(), *canonical, "{text:?}");
    }
}

/// Found by `fuzz/selector`: the canonical form added parentheses (around
/// every `!` operand and every `&&` inside `||`), so a selector within the
/// depth limit printed as one beyond it, which no longer parsed.
#[test]
fn canonical_form_stays_within_the_depth_limit() {
    let mut text = "!z == '1' && y == '1' || w == '1'".to_string();
    for i in 0..64 {
        let op = if i % 2 == 0 { "&&" } else { "||" };
        text = format!("k{i} == '1' {op} ({text})");
    }
    let sel = Selector::parse(&text).unwrap_or_else(|e| panic!("64 levels parse: {e}"));
    let canonical = sel.to_string();
    let again = Selector::parse(&canonical).unwrap_or_else(|e| panic!("canonical form should parse: {e}"));
    assert_eq!(again, sel);
    assert_eq!(again.to_string(), canonical);
}

#[test]
fn label_keys_are_every_key_a_selector_reads() {
    let rows: &[(&str, &[&str])] = &[
        ("all()", &[]),
        ("global()", &[]),
        ("app == 'web'", &["app"]),
        ("has(tier) && !has(quarantine)", &["quarantine", "tier"]),
        ("env in {'a', 'b'} || team not in {'x'}", &["env", "team"]),
        ("!(a contains 'x' && b starts with 'y') || c ends with 'z' && d != 'w'", &["a", "b", "c", "d"]),
        ("projectcalico.org/name == 'default'", &["projectcalico.org/name"]),
    ];
    for (text, want) in rows {
        let selector = Selector::parse(text).unwrap();
        let mut keys = BTreeSet::new();
        selector.label_keys(&mut keys);
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), *want, "{text}");
    }
}
