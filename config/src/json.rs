//! A small pull reader for JSON text, for the plugin config and Istio's node
//! metadata.
//!
//! The filter reads its config with this rather than serde: serde's derived
//! deserializers and serde_json were about half of the Wasm module, and the
//! config has a fixed shape. The typed readers (`crate::config::read`) pull
//! values field by field, so nothing is buffered and an error knows its path
//! (`policies[3].ingress[0].action`) as well as its line and column.
//!
//! What it accepts is RFC 8259 JSON, as serde_json does: UTF-8 text, strings
//! with every escape including surrogate pairs, no raw control characters in
//! strings, no trailing commas, nothing after the top-level value. Free-form
//! values ([`Json`]) nest at most [`MAX_DEPTH`] deep, so hostile input cannot
//! exhaust the Wasm stack.

use std::borrow::Cow;
use std::collections::BinaryHeap;
use std::fmt;

/// How many arrays and objects free-form values may nest (serde_json stops at 127).
pub const MAX_DEPTH: usize = 128;

/// A free-form JSON value: the config's fields that Krites only checks or
/// carries (`icmp`, `notICMP`, `metadata`, `services`). Numbers are doubles,
/// as in Istio's protobuf `Struct`.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    /// Members in document order; keys are unique.
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    /// The member called `key`, if this is an object that has one.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// One step of the path to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(&'static str),
    Key(String),
    Index(usize),
}

/// Whether the text is not JSON at all, or JSON of the wrong shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Syntax,
    Data,
}

/// What went wrong, where: the path (empty at the top level) and the line and
/// column (1-based; the column of the last byte read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub kind: ErrorKind,
    pub problem: String,
    pub line: usize,
    pub column: usize,
    /// Innermost step first: errors collect their path as they propagate, so
    /// the happy path keeps none.
    steps: Vec<Step>,
}

impl ReadError {
    fn within(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// The error as found under field `name` (for a check made after the
    /// field was read).
    pub(crate) fn in_field(self, name: &'static str) -> Self {
        self.within(Step::Field(name))
    }

    /// The error as found in item `index` of list field `name` (for an item
    /// read on its own, after the list).
    pub(crate) fn in_item(self, name: &'static str, index: usize) -> Self {
        self.within(Step::Index(index)).within(Step::Field(name))
    }

    /// `policies[3].ingress[0].action`; empty at the top level.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Field(name) => push_name(&mut out, name),
                Step::Key(key) => push_name(&mut out, key),
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

fn push_name(out: &mut String, name: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(name);
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        if !path.is_empty() {
            write!(f, "{path}: ")?;
        }
        write!(f, "{} at line {} column {}", self.problem, self.line, self.column)
    }
}

impl std::error::Error for ReadError {}

pub type Result<T> = std::result::Result<T, ReadError>;

/// What an object reader does with a member it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// An error: a misspelt field must not be silently ignored.
    Reject,
    /// Read and drop it (for data Krites reads only part of).
    Skip,
}

/// A number as written: integer or not, and its text for the conversions.
struct Number<'a> {
    text: &'a str,
    integer: bool,
}

pub struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a [u8]) -> Self {
        Reader { text, pos: 0, depth: 0 }
    }

    /// Bytes read so far: after a value, where it ends.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Whitespace skipped: where the next value starts.
    pub(crate) fn value_start(&mut self) -> usize {
        self.skip_whitespace();
        self.pos
    }

    /// A reader of `text` from byte `pos`: one value of a document read
    /// before, its errors placed as in the whole document.
    pub(crate) fn at(text: &'a [u8], pos: usize) -> Self {
        Reader { text, pos, depth: 0 }
    }

    /// Passes over one value without reading it, only finding where it ends
    /// (brackets balanced, strings and their escapes stepped over), without
    /// recursion or allocation. Lenient: it refuses only text whose end it
    /// cannot find. A text the typed reader accepts ends here where it ends
    /// there, so whoever skips a value must read it properly later, and
    /// read the whole document again for the exact error if anything fails.
    pub(crate) fn skip_value(&mut self) -> Result<()> {
        let mut open = 0usize;
        loop {
            match self.peek() {
                None => return Err(self.syntax("EOF while parsing a value")),
                Some(b'"') => {
                    self.pos += 1;
                    loop {
                        let rest = self.text.get(self.pos..).unwrap_or_default();
                        let Some(at) = rest.iter().position(|&b| matches!(b, b'"' | b'\\')) else {
                            self.pos = self.text.len();
                            return Err(self.syntax("EOF while parsing a string"));
                        };
                        let quote = rest.get(at) == Some(&b'"');
                        self.pos += at + if quote { 1 } else { 2 };
                        if quote {
                            break;
                        }
                    }
                }
                Some(b'{' | b'[') => {
                    self.pos += 1;
                    open += 1;
                    continue;
                }
                Some(b'}' | b']') if open > 0 => {
                    self.pos += 1;
                    open -= 1;
                }
                Some(b',' | b':') if open > 0 => {
                    self.pos += 1;
                    continue;
                }
                Some(_) => {
                    let rest = self.text.get(self.pos..).unwrap_or_default();
                    let token = rest
                        .iter()
                        .position(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' | b'"' | b'[' | b']' | b'{' | b'}'))
                        .unwrap_or(rest.len());
                    if token == 0 {
                        self.pos += 1;
                        return Err(self.syntax("expected a value"));
                    }
                    self.pos += token;
                }
            }
            if open == 0 {
                return Ok(());
            }
        }
    }

    /// After a value read with [`Reader::at`]: it ends at `end`, where its
    /// document's reader found it to end (as an array item: else the
    /// document's reader would have wanted the array to go on).
    pub(crate) fn ends_at(&mut self, end: usize) -> Result<()> {
        match self.pos == end {
            true => Ok(()),
            false => {
                self.skip_whitespace();
                self.pos += 1;
                Err(self.syntax("expected `,` or `]`"))
            }
        }
    }

    fn fail(&self, kind: ErrorKind, problem: impl Into<String>) -> ReadError {
        let consumed = &self.text[..self.pos.min(self.text.len())];
        let line = 1 + consumed.iter().filter(|&&b| b == b'\n').count();
        let line_start = consumed.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = consumed.len() - line_start;
        ReadError { kind, problem: problem.into(), line, column, steps: Vec::new() }
    }

    /// A value of the wrong shape or range, reported at the current position.
    pub fn invalid(&self, problem: impl Into<String>) -> ReadError {
        self.fail(ErrorKind::Data, problem)
    }

    fn syntax(&self, problem: &str) -> ReadError {
        self.fail(ErrorKind::Syntax, problem)
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Result<u8> {
        let b = self.text.get(self.pos).copied().ok_or_else(|| self.syntax("EOF while parsing a value"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Only whitespace may follow the top-level value.
    pub fn finish(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => {
                self.pos += 1;
                Err(self.syntax("trailing characters"))
            }
        }
    }

    /// What the next value is, for "expected X, found Y".
    fn found(&mut self) -> &'static str {
        match self.peek() {
            Some(b'"') => "a string",
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            Some(b'-' | b'0'..=b'9') => "a number",
            _ => "no value",
        }
    }

    fn expected(&mut self, expected: &str) -> ReadError {
        let found = self.found();
        if found == "no value" {
            return match self.peek() {
                None => self.syntax("EOF while parsing a value"),
                Some(_) => {
                    self.pos += 1;
                    self.syntax("expected value")
                }
            };
        }
        self.pos += 1;
        self.invalid(format!("invalid type: {found}, expected {expected}"))
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        for &b in word {
            if self.next_byte()? != b {
                return Err(self.syntax("expected value"));
            }
        }
        Ok(())
    }

    /// Consumes a `null` if one comes next.
    pub fn null(&mut self) -> Result<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// `null` reads as `None`, as for serde's `Option`.
    pub fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.null()? {
            return Ok(None);
        }
        read(self).map(Some)
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(self.expected("a boolean")),
        }
    }

    /// An object's members, each passed to `member` with its name from
    /// `fields`. The first `required` of `fields` must be present; a member
    /// given twice is an error.
    pub fn object(
        &mut self,
        fields: &[&'static str],
        required: usize,
        unknown: Unknown,
        member: &mut dyn FnMut(&mut Self, &'static str) -> Result<()>,
    ) -> Result<()> {
        if self.peek() != Some(b'{') {
            return Err(self.expected("an object"));
        }
        // One bit per field in `seen`.
        debug_assert!(fields.len() <= 64, "{} fields", fields.len());
        let mut seen: u64 = 0;
        self.members(&mut |r, key| {
            let Some(index) = fields.iter().position(|f| *f == key) else {
                return match unknown {
                    Unknown::Skip => r.value().map(drop),
                    Unknown::Reject => Err(r
                        .invalid(format!("unknown field `{key}`, expected {}", one_of(fields)))
                        .within(Step::Key(key.to_string()))),
                };
            };
            let bit = 1u64 << index.min(63);
            if seen & bit != 0 {
                return Err(r.invalid(format!("duplicate field `{key}`")).within(Step::Field(fields[index])));
            }
            seen |= bit;
            let name = fields[index];
            member(r, name).map_err(|e| e.within(Step::Field(name)))
        })?;
        if let Some(missing) = fields.iter().take(required).enumerate().find(|(i, _)| seen & (1u64 << i) == 0) {
            return Err(self.invalid(format!("missing field `{}`", missing.1)).within(Step::Field(missing.1)));
        }
        Ok(())
    }

    /// An object with free keys (labels): each member's key and its value.
    pub fn map(&mut self, member: &mut dyn FnMut(&mut Self, &str) -> Result<()>) -> Result<()> {
        if self.peek() != Some(b'{') {
            return Err(self.expected("an object"));
        }
        self.members(&mut |r, key| member(r, key).map_err(|e| e.within(Step::Key(key.to_string()))))
    }

    /// The `{ "key": value, ... }` grammar; the caller reads each value.
    fn members(&mut self, member: &mut dyn FnMut(&mut Self, &str) -> Result<()>) -> Result<()> {
        self.pos += 1; // '{'
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("a member name in double quotes"));
            }
            let key = self.string_cow()?;
            if self.peek() != Some(b':') {
                return Err(self.unexpected("`:`"));
            }
            self.pos += 1;
            member(self, &key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.unexpected("`,` or `}`")),
            }
        }
    }

    fn unexpected(&mut self, what: &str) -> ReadError {
        match self.peek() {
            None => self.syntax("EOF while parsing an object"),
            Some(_) => {
                self.pos += 1;
                self.syntax(&format!("expected {what}"))
            }
        }
    }

    /// An array's items, each passed to `item`.
    pub fn array(&mut self, item: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<()> {
        if self.peek() != Some(b'[') {
            return Err(self.expected("an array"));
        }
        self.pos += 1;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            item(self).map_err(|e| e.within(Step::Index(index)))?;
            index += 1;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                None => return Err(self.syntax("EOF while parsing a list")),
                Some(_) => {
                    self.pos += 1;
                    return Err(self.syntax("expected `,` or `]`"));
                }
            }
        }
    }

    /// An array read into a `Vec` with `item`.
    pub fn list<T>(&mut self, item: fn(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.array(&mut |r| item(r).map(|v| out.push(v)))?;
        Ok(out)
    }

    pub fn string(&mut self) -> Result<String> {
        if self.peek() != Some(b'"') {
            return Err(self.expected("a string"));
        }
        self.string_cow().map(Cow::into_owned)
    }

    /// A string, borrowed from the text when it has no escapes.
    fn string_cow(&mut self) -> Result<Cow<'a, str>> {
        self.pos += 1; // '"'
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        let mut run = start;
        loop {
            // Plain bytes up to the next quote, escape or control character, in one scan.
            let rest = self.text.get(self.pos..).unwrap_or_default();
            self.pos += rest.iter().position(|&b| matches!(b, b'"' | b'\\' | 0..=0x1f)).unwrap_or(rest.len());
            let b = self.next_byte().map_err(|_| self.syntax("EOF while parsing a string"))?;
            match b {
                b'"' => {
                    let raw = &self.text[run..self.pos - 1];
                    return match owned {
                        None => std::str::from_utf8(&self.text[start..self.pos - 1])
                            .map(Cow::Borrowed)
                            .map_err(|_| self.syntax("invalid unicode code point")),
                        Some(mut bytes) => {
                            bytes.extend_from_slice(raw);
                            String::from_utf8(bytes).map(Cow::Owned).map_err(|_| self.syntax("invalid unicode code point"))
                        }
                    };
                }
                b'\\' => {
                    let mut bytes = owned.take().unwrap_or_default();
                    bytes.extend_from_slice(&self.text[run..self.pos - 1]);
                    let escaped = match self.next_byte().map_err(|_| self.syntax("EOF while parsing a string"))? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.syntax("invalid escape")),
                    };
                    bytes.extend_from_slice(escaped.encode_utf8(&mut [0; 4]).as_bytes());
                    owned = Some(bytes);
                    run = self.pos;
                }
                0..=0x1f => return Err(self.syntax("control character (\\u0000-\\u001F) found while parsing a string")),
                _ => {}
            }
        }
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut n: u16 = 0;
        for _ in 0..4 {
            let b = self.next_byte().map_err(|_| self.syntax("EOF while parsing a string"))?;
            let digit = (b as char).to_digit(16).ok_or_else(|| self.syntax("invalid escape"))?;
            n = (n << 4) | digit as u16;
        }
        Ok(n)
    }

    /// `\uXXXX`, with a surrogate pair read as one character.
    fn unicode_escape(&mut self) -> Result<char> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.text.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.syntax("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.syntax("lone leading surrogate in hex escape"));
                }
                0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("lone trailing surrogate in hex escape")),
            n => u32::from(n),
        };
        char::from_u32(code).ok_or_else(|| self.syntax("invalid unicode code point"))
    }

    /// A number in JSON's grammar, consumed; not converted.
    fn number(&mut self) -> Result<Number<'a>> {
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.expected("a number"));
        }
        let start = self.pos;
        let digits = |r: &mut Self| {
            let from = r.pos;
            while let Some(b'0'..=b'9') = r.text.get(r.pos) {
                r.pos += 1;
            }
            r.pos > from
        };
        if self.text.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let leading_zero = self.text.get(self.pos) == Some(&b'0');
        if !digits(self) {
            return Err(self.syntax("invalid number"));
        }
        if leading_zero && self.pos - start > 1 + usize::from(self.text[start] == b'-') {
            return Err(self.syntax("invalid number"));
        }
        let mut integer = true;
        if self.text.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            integer = false;
            if !digits(self) {
                return Err(self.syntax("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.text.get(self.pos) {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.text.get(self.pos) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(self.syntax("invalid number"));
            }
        }
        // The grammar above admits ASCII only.
        let text = std::str::from_utf8(&self.text[start..self.pos]).map_err(|_| self.syntax("invalid number"))?;
        Ok(Number { text, integer })
    }

    /// A whole number from 0 to `max`; `expected` names the range for errors
    /// (e.g. "a port number (0-65535)").
    pub fn unsigned(&mut self, max: u64, expected: &str) -> Result<u64> {
        let n = self.number()?;
        if !n.integer {
            return Err(self.invalid(format!("invalid type: floating point `{}`, expected {expected}", n.text)));
        }
        match n.text.parse::<u64>() {
            Ok(v) if v <= max => Ok(v),
            _ => Err(self.invalid(format!("invalid value: integer `{}`, expected {expected}", n.text))),
        }
    }

    /// Whether an object comes next.
    pub fn at_object(&mut self) -> bool {
        self.peek() == Some(b'{')
    }

    /// Whether a number comes next (for fields that take a number or a string).
    pub fn at_number(&mut self) -> bool {
        matches!(self.peek(), Some(b'-' | b'0'..=b'9'))
    }

    /// Any finite number, correctly rounded to the nearest double.
    pub fn float(&mut self) -> Result<f64> {
        let n = self.number()?;
        match n.text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.invalid(format!("number out of range: `{}`", n.text))),
        }
    }

    /// Any value, kept as [`Json`].
    pub fn value(&mut self) -> Result<Json> {
        match self.peek() {
            Some(b'{' | b'[') => {
                if self.depth >= MAX_DEPTH {
                    self.pos += 1;
                    return Err(self.syntax("recursion limit exceeded"));
                }
                self.depth += 1;
                let value = self.container();
                self.depth -= 1;
                value
            }
            Some(b'"') => self.string().map(Json::String),
            Some(b't' | b'f') => self.bool().map(Json::Bool),
            Some(b'n') => self.literal(b"null").map(|()| Json::Null),
            _ => self.float().map(Json::Number),
        }
    }

    fn container(&mut self) -> Result<Json> {
        if self.peek() == Some(b'[') {
            return self.list(Reader::value).map(Json::Array);
        }
        let mut members: Vec<(String, Json)> = Vec::new();
        self.members(&mut |r, key| {
            let v = r.value().map_err(|e| e.within(Step::Key(key.to_string())))?;
            members.push((key.to_string(), v));
            Ok(())
        })?;
        // Checked once the object is read: a sort, not a scan per member
        // (tenants write these objects, and a config may hold millions of keys).
        let sorted = sorted_members(&members);
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            let key = pair[0].0.clone();
            return Err(self.invalid(format!("duplicate key `{key}`")).within(Step::Key(key)));
        }
        Ok(Json::Object(members))
    }
}

/// An object's members in key order. Heapsort, as elsewhere at configure
/// time: far less Wasm than the standard sorts.
pub(crate) fn sorted_members(members: &[(String, Json)]) -> Vec<&(String, Json)> {
    let order = BinaryHeap::from_iter(members.iter().enumerate().map(|(i, (k, _))| (k.as_str(), i))).into_sorted_vec();
    order.into_iter().filter_map(|(_, i)| members.get(i)).collect()
}

/// "`a` or `b`", "one of `a`, `b`, `c`", as serde says it.
pub(crate) fn one_of(fields: &[&str]) -> String {
    match fields {
        [] => "no fields".to_string(),
        [only] => format!("`{only}`"),
        [a, b] => format!("`{a}` or `{b}`"),
        _ => {
            let names: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
            format!("one of {}", names.join(", "))
        }
    }
}

/// `Serialize`/`Deserialize` for [`Json`], so `control` can carry these fields
/// from Calico objects into the config it writes.
mod serde_impls {
    use super::Json;
    use serde::ser::{SerializeMap, SerializeSeq};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for Json {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Json::Null => s.serialize_unit(),
                Json::Bool(b) => s.serialize_bool(*b),
                // Whole numbers are written as integers (`8`, not `8.0`).
                Json::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => s.serialize_i64(*n as i64),
                Json::Number(n) => s.serialize_f64(*n),
                Json::String(v) => s.serialize_str(v),
                Json::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Json::Object(members) => {
                    let mut map = s.serialize_map(Some(members.len()))?;
                    for (k, v) in members {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
            }
        }
    }

    impl<'de> Deserialize<'de> for Json {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde_json::Value::deserialize(d).map(Json::from)
        }
    }

    impl From<serde_json::Value> for Json {
        fn from(v: serde_json::Value) -> Self {
            match v {
                serde_json::Value::Null => Json::Null,
                serde_json::Value::Bool(b) => Json::Bool(b),
                serde_json::Value::Number(n) => Json::Number(n.as_f64().unwrap_or(0.0)),
                serde_json::Value::String(s) => Json::String(s),
                serde_json::Value::Array(items) => Json::Array(items.into_iter().map(Json::from).collect()),
                serde_json::Value::Object(map) => Json::Object(map.into_iter().map(|(k, v)| (k, Json::from(v))).collect()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
