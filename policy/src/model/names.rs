//! One config's strings (namespaces, service accounts, label keys and
//! values), each kept once. At Calico's production shape 32k pod groups
//! repeat the same dozen label keys and a few hundred namespaces and
//! account names: as `String`s in per-group maps they took most of the
//! universe's memory and, cloned and hashed, most of its build time.
//!
//! Storage is one byte buffer with end offsets, and lookup by text is a
//! bisection over the ids sorted by text: no per-string allocation and no
//! hash table kept after the build.

use std::collections::{BinaryHeap, HashMap};

/// A string's id in [`Strings`].
pub type Sym = u32;

#[derive(Debug, Default)]
pub struct Strings {
    bytes: String,
    /// Where string `i` ends in `bytes`; it starts where `i - 1` ends.
    ends: Vec<u32>,
    /// The ids of distinct strings, ascending by text.
    sorted: Vec<Sym>,
}

impl Strings {
    /// The text of `id`; an id this table never gave reads as "".
    pub fn get(&self, id: Sym) -> &str {
        let i = id as usize;
        let Some(&end) = self.ends.get(i) else { return "" };
        let start = i.checked_sub(1).and_then(|p| self.ends.get(p)).copied().unwrap_or(0);
        self.bytes.get(start as usize..end as usize).unwrap_or("")
    }

    /// The id of `text`, if the config has that string anywhere.
    pub fn id(&self, text: &str) -> Option<Sym> {
        let at = self.sorted.partition_point(|&id| self.get(id) < text);
        self.sorted.get(at).copied().filter(|&id| self.get(id) == text)
    }

    /// Bytes held, for memory reports.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + 4 * (self.ends.capacity() + self.sorted.capacity())
    }
}

/// Builds [`Strings`]. Lookup stays a bisection while building; strings
/// added since the last sort wait in a small hash map.
#[derive(Debug, Default)]
pub(crate) struct StringsBuilder {
    strings: Strings,
    pending: HashMap<Box<str>, Sym>,
}

impl StringsBuilder {
    fn push(&mut self, text: &str) -> Sym {
        // A config is far below 4 GiB, so neither count saturates.
        let id = u32::try_from(self.strings.ends.len()).unwrap_or(u32::MAX);
        self.strings.bytes.push_str(text);
        self.strings.ends.push(u32::try_from(self.strings.bytes.len()).unwrap_or(u32::MAX));
        id
    }

    /// The id of `text`, added if new.
    pub(crate) fn intern(&mut self, text: &str) -> Sym {
        if let Some(id) = self.strings.id(text).or_else(|| self.pending.get(text).copied()) {
            return id;
        }
        let id = self.push(text);
        self.pending.insert(text.into(), id);
        id
    }

    /// Adds a whole list at once (an endpoint table's strings): one sort
    /// instead of a hash insert per string. Returns each entry's id; an
    /// entry equal to a string already known gets that string's id.
    pub(crate) fn intern_list<'a>(&mut self, list: impl IntoIterator<Item = &'a str>) -> Vec<Sym> {
        let pushed: Vec<Sym> = list.into_iter().map(|text| self.push(text)).collect();
        let canonical = self.sort();
        pushed.into_iter().map(|id| canonical.get(id as usize).copied().unwrap_or(id)).collect()
    }

    /// Sorts every id by text into `sorted`, keeping the first id of each
    /// text; returns, for every id, the id kept for its text.
    fn sort(&mut self) -> Vec<Sym> {
        let (sorted, canonical) = {
            let strings = &self.strings;
            let all: Vec<(&str, Sym)> = (0..strings.ends.len()).map(|i| i as Sym).map(|id| (strings.get(id), id)).collect();
            // Heapsort: configure time only, and far less Wasm than sort_unstable's.
            let all = BinaryHeap::from(all).into_sorted_vec();
            let mut canonical = vec![0; all.len()];
            let mut sorted = Vec::with_capacity(all.len());
            let mut kept: Option<(&str, Sym)> = None;
            for (text, id) in all {
                let keep = match kept {
                    Some((t, k)) if t == text => k,
                    _ => {
                        sorted.push(id);
                        kept = Some((text, id));
                        id
                    }
                };
                if let Some(slot) = canonical.get_mut(id as usize) {
                    *slot = keep;
                }
            }
            (sorted, canonical)
        };
        self.strings.sorted = sorted;
        self.pending = HashMap::new();
        canonical
    }

    pub(crate) fn finish(mut self) -> Strings {
        if !self.pending.is_empty() {
            self.sort();
        }
        self.strings.bytes.shrink_to_fit();
        self.strings.ends.shrink_to_fit();
        self.strings
    }
}

/// A label set as interned (key, value) pairs, ascending by key id, keys
/// unique: built by [`label_set`].
pub type LabelPairs = Box<[(Sym, Sym)]>;

/// Orders `pairs` by key and keeps the first pair of each key. Insertion
/// sort: label sets are small, and it costs the module almost no code.
pub(crate) fn label_set(mut pairs: Vec<(Sym, Sym)>) -> LabelPairs {
    for i in 1..pairs.len() {
        let mut j = i;
        while j > 0 && pairs.get(j - 1).map(|p| p.0) > pairs.get(j).map(|p| p.0) {
            pairs.swap(j - 1, j);
            j -= 1;
        }
    }
    pairs.dedup_by_key(|p| p.0);
    pairs.into_boxed_slice()
}

/// Sets `key` to `value` in a [`label_set`], replacing or inserting.
pub(crate) fn set_label(pairs: &mut Vec<(Sym, Sym)>, key: Sym, value: Sym, replace: bool) {
    match pairs.binary_search_by_key(&key, |p| p.0) {
        Ok(at) if replace => {
            if let Some(p) = pairs.get_mut(at) {
                p.1 = value;
            }
        }
        Ok(_) => {}
        Err(at) => pairs.insert(at, (key, value)),
    }
}

/// The value of `key` in interned `pairs`.
pub(crate) fn label_in<'a>(strings: &'a Strings, pairs: &[(Sym, Sym)], key: &str) -> Option<&'a str> {
    let key = strings.id(key)?;
    let at = pairs.binary_search_by_key(&key, |p| p.0).ok()?;
    pairs.get(at).map(|&(_, v)| strings.get(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn interning_gives_one_id_per_text_in_both_ways_of_adding() {
        let mut b = StringsBuilder::default();
        let app = b.intern("app");
        let listed = b.intern_list(["db", "app", "", "db", "web"]);
        assert_eq!(listed[1], app, "a listed string already known keeps its id");
        assert_eq!(listed[0], listed[3], "a repeated list entry gets one id");
        let web = b.intern("web");
        assert_eq!(web, listed[4]);
        let late = b.intern("zeta");
        let strings = b.finish();
        for (text, id) in [("app", app), ("db", listed[0]), ("", listed[2]), ("web", web), ("zeta", late)] {
            assert_eq!(strings.get(id), text);
            assert_eq!(strings.id(text), Some(id), "{text:?}");
        }
        assert_eq!(strings.id("nope"), None);
        assert_eq!(strings.get(9999), "");
    }

    #[test]
    fn a_label_set_is_ordered_by_key_with_one_pair_per_key() {
        let set = label_set(vec![(5, 1), (2, 7), (5, 9), (3, 3)]);
        assert_eq!(&*set, &[(2, 7), (3, 3), (5, 1)]);
        let mut pairs = set.into_vec();
        set_label(&mut pairs, 3, 4, true);
        set_label(&mut pairs, 2, 8, false);
        set_label(&mut pairs, 4, 0, false);
        assert_eq!(pairs, vec![(2, 7), (3, 4), (4, 0), (5, 1)]);
    }
}
