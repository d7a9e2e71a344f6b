//! Recursive-descent parser for Calico selectors.
//!
//! Scannerless on purpose: Calico's operator words (`in`, `contains`, ...) are
//! also valid label names (`contains contains 'x'` is legal), so what a word
//! means depends on where it stands. Precedence, tightest first: comparisons,
//! parentheses, `!`, `&&`, `||`.

use std::collections::BTreeSet;

use super::Selector;

/// Nesting deeper than this is rejected: evaluation recurses, and a stack
/// overflow inside a Wasm VM is a trap.
const MAX_DEPTH: usize = 64;
const MAX_LABEL_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct SelectorError {
    /// 1-based character column where the problem starts.
    pub column: usize,
    pub message: String,
}

pub(super) fn parse(input: &str) -> Result<Selector, SelectorError> {
    let mut p = Parser { chars: input.chars().collect(), pos: 0, depth: 0 };
    p.skip_ws();
    if p.at_end() {
        return Ok(Selector::All);
    }
    let sel = p.or()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.unexpected("`&&`, `||` or the end of the selector"));
    }
    Ok(sel)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    /// Calico allows only spaces and tabs; a newline is a syntax error.
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn looking_at(&self, s: &str) -> bool {
        (self.pos..).zip(s.chars()).all(|(i, c)| self.chars.get(i) == Some(&c))
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.looking_at(s) {
            self.pos += s.chars().count();
            true
        } else {
            false
        }
    }

    /// Eats an operator word that must not run on into a longer word.
    fn eat_word(&mut self, word: &str) -> bool {
        let start = self.pos;
        if self.eat(word) {
            if !self.peek().is_some_and(is_word_char) {
                return true;
            }
            self.pos = start;
        }
        false
    }

    /// Two-word operators (`not in`, `starts with`) accept any spacing, none included.
    fn eat_words(&mut self, first: &str, second: &str) -> bool {
        let start = self.pos;
        if self.eat(first) {
            self.skip_ws();
            if self.eat_word(second) {
                return true;
            }
        }
        self.pos = start;
        false
    }

    fn error(&self, at: usize, message: impl Into<String>) -> SelectorError {
        SelectorError { column: at + 1, message: message.into() }
    }

    fn unexpected(&self, expected: &str) -> SelectorError {
        match self.peek() {
            Some(c) => self.error(self.pos, format!("unexpected `{c}`, expected {expected}")),
            None => self.error(self.pos, format!("unexpected end of selector, expected {expected}")),
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), SelectorError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.and()?];
        loop {
            self.skip_ws();
            if !self.eat("||") {
                break;
            }
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Selector::Or(parts) })
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.unary()?];
        loop {
            self.skip_ws();
            if !self.eat("&&") {
                break;
            }
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Selector::And(parts) })
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        let mut negations = 0usize;
        loop {
            self.skip_ws();
            if self.peek() == Some('!') {
                self.pos += 1;
                negations += 1;
            } else {
                break;
            }
        }
        let inner = self.primary()?;
        // Any number of `!` collapses by parity, as in Calico.
        Ok(if negations % 2 == 1 { Selector::Not(Box::new(inner)) } else { inner })
    }

    fn primary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.peek() == Some('(') {
            let open = self.pos;
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(open, format!("selector nests deeper than {MAX_DEPTH} levels")));
            }
            let inner = self.or()?;
            self.expect(')', "`)`")?;
            self.depth -= 1;
            return Ok(inner);
        }
        // `all(`, `global(` and `has(` take no space before the parenthesis;
        // without it the word is an ordinary label name.
        if self.eat("all(") {
            self.expect(')', "`)` to close `all(`")?;
            return Ok(Selector::All);
        }
        if self.eat("global(") {
            self.expect(')', "`)` to close `global(`")?;
            return Ok(Selector::Global);
        }
        if self.eat("has(") {
            self.skip_ws();
            let key = self.label()?;
            self.expect(')', "`)` to close `has(`")?;
            return Ok(Selector::Has(key));
        }
        let key = self.label()?;
        self.skip_ws();
        self.comparison(key)
    }

    fn comparison(&mut self, key: String) -> Result<Selector, SelectorError> {
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_words("not", "in") {
            return Ok(Selector::NotIn(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_words("starts", "with") {
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_words("ends", "with") {
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        Err(self.unexpected(&format!(
            "an operator after label `{key}` (==, !=, in, not in, contains, starts with, ends with)"
        )))
    }

    fn label(&mut self) -> Result<String, SelectorError> {
        let start = self.pos;
        while self.peek().is_some_and(is_label_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.unexpected("a label, `(`, `!`, `has(`, `all()` or `global()`"));
        }
        if self.pos - start > MAX_LABEL_LEN {
            return Err(self.error(start, format!("label longer than {MAX_LABEL_LEN} characters")));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// `'…'` or `"…"`, no escapes: a literal cannot contain its own quote.
    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.unexpected("a quoted string")),
        };
        let open = self.pos;
        self.pos += 1;
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == quote {
                let value = self.chars[start..self.pos].iter().collect();
                self.pos += 1;
                return Ok(value);
            }
            self.pos += 1;
        }
        Err(self.error(open, "unterminated string"))
    }

    /// `{ 'a', "b", }`: empty sets and a trailing comma are allowed.
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect('{', "`{` to open a set")?;
        let mut values = BTreeSet::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(values);
            }
            values.insert(self.string()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(self.unexpected("`,` or `}`")),
            }
        }
    }
}
