//! One config's strings (namespaces, service accounts, label keys and
//! values), each kept once. At Calico's production shape 32k pod groups
//! repeat the same dozen label keys and a few hundred namespaces and
//! account names: as `String`s in per-group maps they took most of the
//! universe's memory and, cloned and hashed, most of its build time.
//!
//! Storage is one byte buffer with end offsets, and lookup by text is a
//! bisection over the ids sorted by the text's hash (u64 comparisons, then
//! one text comparison): no per-string allocation and no hash table kept
//! after the build. Requests look up label keys here, so lookup must stay
//! cheap.

use std::collections::{BinaryHeap, HashMap};

use crate::engine::index::running_totals;

/// A string's id in [`Strings`].
pub type Sym = u32;

#[derive(Debug, Default)]
pub struct Strings {
    bytes: String,
    /// Where string `i` ends in `bytes`; it starts where `i - 1` ends.
    ends: Vec<u32>,
    /// (hash of the text, as two halves, id) of distinct strings, ascending.
    by_hash: Vec<(u32, u32, Sym)>,
}

type Triple = (u32, u32, u32);

/// Sorts triples; every sort of the universe uses this one instantiation.
/// Triples of small numbers (symbols, group positions) are sorted by
/// counting, in linear time: the label index's heapsort alone was ~7% of a
/// Calico-scale `on_configure`. Others (hashes) by heapsort: far less Wasm
/// than sort_unstable's.
pub(crate) fn sorted(triples: Vec<Triple>) -> Vec<Triple> {
    // Counting needs one slot per possible value: worth it while that stays
    // near the number of triples (so a few triples never take a large table).
    let limit = triples.len().saturating_mul(8).max(1 << 10);
    let keys: [fn(&Triple) -> u32; 3] = [|t| t.2, |t| t.1, |t| t.0];
    let widest = keys.iter().map(|key| triples.iter().map(key).max().unwrap_or(0) as usize).max().unwrap_or(0);
    if widest >= limit {
        return BinaryHeap::from(triples).into_sorted_vec();
    }
    // Least significant component first; each pass is stable, so the last
    // leaves the triples in order of all three.
    let mut items = triples;
    let mut counts = vec![0u32; widest + 2];
    for key in keys {
        if items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
            continue; // a stable pass would change nothing
        }
        counts.iter_mut().for_each(|c| *c = 0);
        for t in &items {
            if let Some(c) = counts.get_mut(key(t) as usize + 1) {
                *c += 1;
            }
        }
        running_totals(&mut counts);
        let mut out = vec![(0, 0, 0); items.len()];
        for &t in &items {
            if let Some(at) = counts.get_mut(key(&t) as usize) {
                if let Some(slot) = out.get_mut(*at as usize) {
                    *slot = t;
                }
                *at += 1;
            }
        }
        items = out;
    }
    items
}

/// A 64-bit hash as the two halves the sorted triples hold.
pub(crate) fn halves(hash: u64) -> (u32, u32) {
    ((hash >> 32) as u32, hash as u32)
}

/// FNV-1a: a few instructions of module code (SipHash cost 10 KB of it),
/// the same on every VM and in `control check`. Only lookup speed rests on
/// it: equal hashes are told apart by comparing the texts.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn hash_of(text: &str) -> u64 {
    fnv(FNV_OFFSET, text.as_bytes())
}

/// [`hash_of`] for a (namespace, service account) pair; 0xff never occurs
/// in UTF-8, so it separates the two.
pub(crate) fn hash_of_pair(a: &str, b: &str) -> u64 {
    fnv(fnv(fnv(FNV_OFFSET, a.as_bytes()), &[0xff]), b.as_bytes())
}

impl Strings {
    /// The text of `id`; an id this table never gave reads as "".
    pub fn get(&self, id: Sym) -> &str {
        let i = id as usize;
        let Some(&end) = self.ends.get(i) else { return "" };
        let start = i.checked_sub(1).and_then(|p| self.ends.get(p)).copied().unwrap_or(0);
        self.bytes.get(start as usize..end as usize).unwrap_or("")
    }

    /// The id of `text`, if the config has that string anywhere. Not
    /// inlined: it is called from many places, and module size counts.
    #[inline(never)]
    pub fn id(&self, text: &str) -> Option<Sym> {
        let hash = halves(hash_of(text));
        let at = self.by_hash.partition_point(|e| (e.0, e.1) < hash);
        let same = self.by_hash.get(at..)?.iter().take_while(|e| (e.0, e.1) == hash);
        same.map(|e| e.2).find(|&id| self.get(id) == text)
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

    /// Sorts every id by (hash, id) into `by_hash`, keeping the first id
    /// of each text; returns, for every id, the id kept for its text.
    fn sort(&mut self) -> Vec<Sym> {
        let (by_hash, canonical) = {
            let strings = &self.strings;
            let all = (0..strings.ends.len()).map(|i| i as Sym).map(|id| {
                let (hi, lo) = halves(hash_of(strings.get(id)));
                (hi, lo, id)
            });
            let all = sorted(all.collect());
            let mut canonical = vec![0; all.len()];
            let mut by_hash: Vec<(u32, u32, Sym)> = Vec::with_capacity(all.len());
            let mut run = 0; // where the kept entries of the current hash start
            for (hi, lo, id) in all {
                if by_hash.last().is_none_or(|e| (e.0, e.1) != (hi, lo)) {
                    run = by_hash.len();
                }
                let text = strings.get(id);
                // Equal texts hash alike; a smaller id of the same text came first.
                let same = by_hash.get(run..).into_iter().flatten().map(|e| e.2).find(|&k| strings.get(k) == text);
                let keep = same.unwrap_or_else(|| {
                    by_hash.push((hi, lo, id));
                    id
                });
                if let Some(slot) = canonical.get_mut(id as usize) {
                    *slot = keep;
                }
            }
            (by_hash, canonical)
        };
        self.strings.by_hash = by_hash;
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

    /// Counted or heapsorted, triples come out in std's order.
    #[test]
    fn sorted_orders_triples_as_std_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(bound)) as u32
        };
        for (len, bound) in [(0, 1), (1, 5), (50, 3), (5000, 40), (5000, 70_000), (300, u32::MAX)] {
            // Third component ascending as the builders give it, and shuffled.
            for ascending in [true, false] {
                let triples: Vec<(u32, u32, u32)> =
                    (0..len).map(|i| (next(bound), next(bound), if ascending { i } else { next(bound) })).collect();
                let mut want = triples.clone();
                want.sort_unstable();
                assert_eq!(sorted(triples), want, "len {len}, bound {bound}");
            }
        }
    }

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
    fn many_strings_each_find_their_own_id() {
        let texts: Vec<String> = (0..5000).map(|i| format!("label-{}", i * 7919 % 5003)).collect();
        let mut b = StringsBuilder::default();
        let early: Vec<Sym> = texts.iter().take(100).map(|t| b.intern(t)).collect();
        let listed = b.intern_list(texts.iter().map(String::as_str));
        assert_eq!(&listed[..100], &early[..], "listed after interning: the first ids stay");
        let strings = b.finish();
        for (text, id) in texts.iter().zip(&listed) {
            assert_eq!(strings.get(*id), text);
            assert_eq!(strings.id(text), Some(*id));
        }
        assert_eq!(strings.id("label-5003"), None);
        // Distinct texts, one hash: the pair hash keeps its two parts apart.
        assert_ne!(hash_of_pair("ab", "c"), hash_of_pair("a", "bc"));
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
