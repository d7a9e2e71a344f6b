//! Calico's label selector language: `app == 'db' && has(tier) || env in {'a','b'}`.
//!
//! The grammar follows libcalico-go's parser (see `parse.rs`); evaluation follows
//! its semantics for missing labels: `==`, `in`, `contains`, `starts with`,
//! `ends with` and `has` are false on a missing label, `!=` and `not in` are true.

mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

pub use parse::SelectorError;

/// Anything that can answer "what is the value of label `key`?".
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

/// A parsed selector. Cheap to evaluate: no allocation, no parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `all()`, or an empty selector.
    All,
    /// `global()`: true by itself; meaningful only in a rule's namespaceSelector,
    /// where the engine gives it its own meaning (non-namespaced entities).
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

impl Selector {
    /// Parses Calico selector syntax. An empty or blank string is `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        parse::parse(input)
    }

    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(k) => labels.label(k).is_some(),
            Selector::Eq(k, v) => labels.label(k) == Some(v.as_str()),
            Selector::Ne(k, v) => labels.label(k) != Some(v.as_str()),
            Selector::In(k, set) => labels.label(k).is_some_and(|v| set.contains(v)),
            Selector::NotIn(k, set) => !labels.label(k).is_some_and(|v| set.contains(v)),
            Selector::Contains(k, s) => labels.label(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => labels.label(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => labels.label(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(inner) => !inner.matches(labels),
            Selector::And(parts) => parts.iter().all(|p| p.matches(labels)),
            Selector::Or(parts) => parts.iter().any(|p| p.matches(labels)),
        }
    }

    /// True if `global()` appears anywhere (rejected in pod selectors).
    pub fn uses_global(&self) -> bool {
        match self {
            Selector::Global => true,
            Selector::Not(inner) => inner.uses_global(),
            Selector::And(parts) | Selector::Or(parts) => parts.iter().any(Selector::uses_global),
            _ => false,
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Selector::All)
    }

    /// Adds every label key this selector reads to `keys`. A label whose key
    /// no selector of a config reads changes none of its decisions.
    pub fn label_keys<'a>(&'a self, keys: &mut BTreeSet<&'a str>) {
        self.each_key(&mut |k| {
            keys.insert(k);
        });
    }

    /// Calls `f` with every label key this selector reads (as often as it
    /// is read).
    pub fn each_key<'a>(&'a self, f: &mut dyn FnMut(&'a str)) {
        match self {
            Selector::All | Selector::Global => {}
            Selector::Has(k)
            | Selector::Eq(k, _)
            | Selector::Ne(k, _)
            | Selector::In(k, _)
            | Selector::NotIn(k, _)
            | Selector::Contains(k, _)
            | Selector::StartsWith(k, _)
            | Selector::EndsWith(k, _) => f(k),
            Selector::Not(inner) => inner.each_key(f),
            Selector::And(parts) | Selector::Or(parts) => parts.iter().for_each(|p| p.each_key(f)),
        }
    }
}

/// Canonical text: re-parses to an equal selector. Parentheses only where the
/// grammar needs them (precedence is comparisons, `!`, `&&`, `||`), so the
/// canonical form never nests deeper than the text it was parsed from and
/// always stays within the parser's depth limit.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", Quoted(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", Quoted(v)),
            Selector::In(k, set) => write!(f, "{k} in {}", QuotedSet(set)),
            Selector::NotIn(k, set) => write!(f, "{k} not in {}", QuotedSet(set)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", Quoted(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", Quoted(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", Quoted(v)),
            // `!!x` would collapse by parity, so a nested `!` keeps its group.
            Selector::Not(inner) => match **inner {
                Selector::Not(_) | Selector::And(_) | Selector::Or(_) => write!(f, "!({inner})"),
                _ => write!(f, "!{inner}"),
            },
            Selector::And(parts) => write_joined(f, parts, " && ", |p| matches!(p, Selector::And(_) | Selector::Or(_))),
            // `&&` binds tighter than `||`: an `&&` part needs no parentheses.
            Selector::Or(parts) => write_joined(f, parts, " || ", |p| matches!(p, Selector::Or(_))),
        }
    }
}

fn write_joined(f: &mut fmt::Formatter<'_>, parts: &[Selector], sep: &str, group: fn(&Selector) -> bool) -> fmt::Result {
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if group(p) {
            write!(f, "({p})")?;
        } else {
            write!(f, "{p}")?;
        }
    }
    Ok(())
}

/// A literal cannot contain its own quote character, so pick the one it lacks.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains('\'') {
            write!(f, "\"{}\"", self.0)
        } else {
            write!(f, "'{}'", self.0)
        }
    }
}

struct QuotedSet<'a>(&'a BTreeSet<String>);

impl fmt::Display for QuotedSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Quoted(v))?;
        }
        f.write_str("}")
    }
}
