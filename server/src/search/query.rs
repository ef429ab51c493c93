//! Query evaluation by score tiers, straight on the postings.
//!
//! A document's score is a sum over the query's words of the word's best
//! *option*; an option is one alternative of the word (see
//! [`analyze::QueryWord`]) with one *tier* chosen for each of its terms
//! (exact, prefix or typo match in one field), scoring the mean of those
//! tiers' scores. So the possible scores are few and known before any
//! posting is read, and a document's score is the highest *combination* (one
//! option per word) it matches.
//!
//! Evaluation walks the combinations in decreasing score order (a best-first
//! enumeration over each word's options, sorted by score) and, for each, the
//! intersection of its terms' postings in document order, taking documents
//! not taken by an earlier combination, until `want` documents are taken.
//! **Invariant:** a document is taken at its own score (the first
//! combination it matches is its best), so the list is exactly a top `want`
//! by score; ties within one combination come in document order, and
//! [`super::SearchIndex`] orders them by popularity afterwards.
//!
//! Cost: a combination stops after `want` documents, so a term matching half
//! the catalogue costs no more than a rare one; an empty combination costs the
//! seeks of its shortest posting list. Tiers whose term is in no segment are
//! dropped before enumeration (one dictionary lookup each). Typo tiers are
//! expanded through the term dictionary with a Levenshtein automaton (at most
//! [`FUZZY_EXPANSIONS_MAX`] terms per field), not by a bitset of every match.
//! At most [`COMBINATIONS_MAX`] combinations and [`SEEKS_MAX`] posting moves
//! are spent per kind of result: a query of many common words that rarely
//! occur together may return fewer hits than exist, but what it returns is
//! always the top of the ranking (the combinations are walked best first).

use std::collections::{BinaryHeap, HashSet};
use std::sync::OnceLock;

use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder, DFA};
use tantivy::columnar::Column;
use tantivy::postings::SegmentPostings;
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocAddress, DocId, DocSet, Searcher, Term, TERMINATED};

use super::analyze;

/// Most dictionary terms one typo tier expands to, per field.
pub const FUZZY_EXPANSIONS_MAX: usize = 32;
/// Most combinations evaluated for one kind of result.
pub const COMBINATIONS_MAX: usize = 64;
/// Most posting-list moves (seeks) spent on one kind of result: bounds a
/// query whose words are each common but rare together, whose combinations
/// are long walks that find little.
pub const SEEKS_MAX: u64 = 200_000;

/// Scores of a term matching exactly, by prefix and by typo, by field role
/// (title, artist, album).
pub const EXACT_SCORES: [f32; 3] = [90.0, 80.0, 70.0];
pub const PREFIX_SCORES: [f32; 3] = [60.0, 50.0, 40.0];
pub const FUZZY_SCORES: [f32; 3] = [30.0, 20.0, 10.0];

/// The text fields of one kind of document, by role; `None` when the kind
/// has no such role (an artist has only a name).
#[derive(Debug, Clone, Copy)]
pub struct KindFields {
    pub exact: [Option<Field>; 3],
    pub prefix: [Option<Field>; 3],
}

/// Failures reading the index.
pub type Result<T> = std::result::Result<T, tantivy::TantivyError>;

/// Levenshtein automaton builders (Damerau: a transposition is one edit),
/// for distances 1 and 2; building one takes milliseconds, so once.
fn builder(distance: u8) -> &'static LevenshteinAutomatonBuilder {
    static ONE: OnceLock<LevenshteinAutomatonBuilder> = OnceLock::new();
    static TWO: OnceLock<LevenshteinAutomatonBuilder> = OnceLock::new();
    let cell = if distance <= 1 { &ONE } else { &TWO };
    cell.get_or_init(|| LevenshteinAutomatonBuilder::new(distance.clamp(1, 2), true))
}

/// A DFA as an automaton over the term dictionary, matching terms at a
/// distance of at least one (distance 0 is the exact tier's).
struct Typo<'a>(&'a DFA);

impl tantivy_fst::Automaton for Typo<'_> {
    type State = u32;

    fn start(&self) -> u32 {
        self.0.initial_state()
    }

    fn is_match(&self, state: &u32) -> bool {
        matches!(self.0.distance(*state), Distance::Exact(d) if d > 0)
    }

    fn can_match(&self, state: &u32) -> bool {
        *state != levenshtein_automata::SINK_STATE
    }

    fn accept(&self, state: &u32, byte: u8) -> u32 {
        self.0.transition(*state, byte)
    }
}

/// What one term of an option must match in one field.
#[derive(Debug, Clone)]
enum Source {
    Term(Term),
    /// Any of these (a typo tier's expansion).
    AnyOf(Vec<Term>),
}

/// One option of a word: its score and a source per term of the alternative.
#[derive(Debug, Clone)]
struct WordOption {
    score: f32,
    sources: Vec<Source>,
}

/// The tiers of one query term in one kind of document, best first, only
/// those present in some segment.
fn term_tiers(
    searcher: &Searcher,
    fields: &KindFields,
    t: &analyze::QueryTerm,
    dfa: Option<&DFA>,
) -> Result<Vec<(f32, Source)>> {
    let present = |term: &Term| -> Result<bool> {
        for seg in searcher.segment_readers() {
            let inv = seg.inverted_index(term.field())?;
            if inv.get_term_info(term)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut tiers = Vec::new();
    for (field, score) in fields.exact.iter().zip(EXACT_SCORES) {
        if let Some(f) = field {
            let term = Term::from_field_text(*f, &t.text);
            if present(&term)? {
                tiers.push((score, Source::Term(term)));
            }
        }
    }
    if t.prefix {
        for (field, score) in fields.prefix.iter().zip(PREFIX_SCORES) {
            if let Some(f) = field {
                let term = Term::from_field_text(*f, &t.text);
                if present(&term)? {
                    tiers.push((score, Source::Term(term)));
                }
            }
        }
    }
    if let Some(dfa) = dfa {
        for (field, score) in fields.exact.iter().zip(FUZZY_SCORES) {
            let Some(f) = *field else { continue };
            let mut terms: Vec<Term> = Vec::new();
            for seg in searcher.segment_readers() {
                let inv = seg.inverted_index(f)?;
                let mut stream = inv.terms().search(Typo(dfa)).into_stream()?;
                while terms.len() < FUZZY_EXPANSIONS_MAX && stream.advance() {
                    if let Ok(text) = std::str::from_utf8(stream.key()) {
                        let term = Term::from_field_text(f, text);
                        if !terms.contains(&term) {
                            terms.push(term);
                        }
                    }
                }
            }
            if !terms.is_empty() {
                tiers.push((score, Source::AnyOf(terms)));
            }
        }
    }
    Ok(tiers)
}

/// The options of every word for one kind of document, each list sorted by
/// decreasing score. An empty list: that word matches nothing here.
fn word_options(
    searcher: &Searcher,
    fields: &KindFields,
    words: &[analyze::QueryWord],
    dfas: &[Vec<Vec<Option<DFA>>>],
) -> Result<Vec<Vec<WordOption>>> {
    let mut out = Vec::with_capacity(words.len());
    for (word, word_dfas) in words.iter().zip(dfas) {
        let mut options: Vec<WordOption> = Vec::new();
        for (alternative, alt_dfas) in word.iter().zip(word_dfas) {
            // The cross product of the terms' tiers: small, since only
            // present tiers count (and an alternative has few terms).
            let mut partial: Vec<(f32, Vec<Source>)> = vec![(0.0, Vec::new())];
            for (t, dfa) in alternative.iter().zip(alt_dfas) {
                let tiers = term_tiers(searcher, fields, t, dfa.as_ref())?;
                let mut next = Vec::with_capacity(partial.len() * tiers.len());
                for (sum, sources) in &partial {
                    for (score, source) in &tiers {
                        let mut s = sources.clone();
                        s.push(source.clone());
                        next.push((sum + score, s));
                    }
                }
                partial = next;
                if partial.is_empty() {
                    break;
                }
                // Keep the best (an alternative of many terms could
                // otherwise multiply out without bound).
                partial.sort_by(|a, b| b.0.total_cmp(&a.0));
                partial.truncate(COMBINATIONS_MAX);
            }
            let n = alternative.len().max(1) as f32;
            options.extend(partial.into_iter().map(|(sum, sources)| WordOption {
                // The mean, not the sum: "ac/dc" as one joined term and as
                // two parts weighs the same.
                score: sum / n,
                sources,
            }));
        }
        options.sort_by(|a, b| b.score.total_cmp(&a.score));
        out.push(options);
    }
    Ok(out)
}

/// The automata of every term that may match by typo, built once per query
/// and shared by the kinds of document.
pub fn typo_automata(words: &[analyze::QueryWord]) -> Vec<Vec<Vec<Option<DFA>>>> {
    words
        .iter()
        .map(|w| {
            w.iter()
                .map(|alt| {
                    alt.iter()
                        .map(|t| {
                            (t.fuzzy_distance > 0)
                                .then(|| builder(t.fuzzy_distance).build_dfa(&t.text))
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// A document set: the union of one posting list or a few (a typo tier).
struct Postings(Vec<SegmentPostings>);

impl Postings {
    fn doc(&self) -> DocId {
        self.0.iter().map(|p| p.doc()).min().unwrap_or(TERMINATED)
    }

    fn len(&self) -> u32 {
        self.0.iter().map(|p| p.size_hint()).sum()
    }

    /// Moves to the first document at or after `target` (at or after the
    /// current one).
    fn seek(&mut self, target: DocId) -> DocId {
        for p in self.0.iter_mut() {
            if p.doc() < target {
                p.seek(target);
            }
        }
        self.doc()
    }
}

fn open(seg: &tantivy::SegmentReader, source: &Source) -> Result<Option<Postings>> {
    let read = |term: &Term| -> Result<Option<SegmentPostings>> {
        let inv = seg.inverted_index(term.field())?;
        Ok(inv.read_postings(term, IndexRecordOption::Basic)?)
    };
    let terms = match source {
        Source::Term(t) => std::slice::from_ref(t),
        Source::AnyOf(ts) => ts.as_slice(),
    };
    let mut ps = Vec::with_capacity(terms.len());
    for t in terms {
        if let Some(p) = read(t)? {
            ps.push(p);
        }
    }
    Ok((!ps.is_empty()).then_some(Postings(ps)))
}

/// A filter on the documents taken (besides being alive): of this kind
/// code, read from these columns (one per segment).
pub struct Filter<'a> {
    pub kind: Option<(u64, &'a [Column<u64>])>,
}

/// Collects, for one kind of document, up to `want` documents in
/// decreasing score order (see the module doc).
pub fn top_documents(
    searcher: &Searcher,
    fields: &KindFields,
    words: &[analyze::QueryWord],
    dfas: &[Vec<Vec<Option<DFA>>>],
    filter: &Filter<'_>,
    want: usize,
) -> Result<Vec<(f32, DocAddress)>> {
    let mut out = Vec::new();
    if words.is_empty() || want == 0 {
        return Ok(out);
    }
    let options = word_options(searcher, fields, words, dfas)?;
    if options.iter().any(Vec::is_empty) {
        return Ok(out);
    }
    let mut seen: HashSet<DocAddress> = HashSet::new();
    // Best-first over the index vectors (one option index per word).
    let score_of =
        |ix: &[usize]| -> f32 { ix.iter().zip(&options).map(|(&i, o)| o[i].score).sum() };
    let mut heap: BinaryHeap<Ranked> = BinaryHeap::new();
    let mut queued: HashSet<Vec<usize>> = HashSet::new();
    let first = vec![0usize; options.len()];
    heap.push(Ranked {
        score: score_of(&first),
        ix: first.clone(),
    });
    queued.insert(first);
    let mut evaluated = 0usize;
    let mut seeks = 0u64;
    while let Some(Ranked { score, ix }) = heap.pop() {
        if out.len() >= want || evaluated >= COMBINATIONS_MAX || seeks >= SEEKS_MAX {
            break;
        }
        evaluated += 1;
        let sources: Vec<&Source> = ix
            .iter()
            .zip(&options)
            .flat_map(|(&i, o)| o[i].sources.iter())
            .collect();
        for (seg_ord, seg) in searcher.segment_readers().iter().enumerate() {
            if out.len() >= want {
                break;
            }
            let mut sets = Vec::with_capacity(sources.len());
            for s in &sources {
                match open(seg, s)? {
                    Some(p) => sets.push(p),
                    None => break,
                }
            }
            if sets.len() < sources.len() {
                continue;
            }
            // The shortest list leads the intersection.
            sets.sort_by_key(Postings::len);
            let alive = seg.alive_bitset();
            let kind = filter.kind.map(|(code, cols)| (code, cols.get(seg_ord)));
            let mut doc = sets[0].doc();
            'docs: while doc != TERMINATED && out.len() < want && seeks < SEEKS_MAX {
                // Move every list to the first document all of them hold.
                loop {
                    let mut moved = false;
                    for set in sets.iter_mut() {
                        seeks += 1;
                        let d = set.seek(doc);
                        if d > doc {
                            doc = d;
                            moved = true;
                        }
                    }
                    if doc == TERMINATED {
                        break 'docs;
                    }
                    if !moved {
                        break;
                    }
                }
                let ok = alive.is_none_or(|a| a.is_alive(doc))
                    && match kind {
                        Some((code, Some(col))) => col.first(doc) == Some(code),
                        Some((_, None)) => false,
                        None => true,
                    };
                let addr = DocAddress::new(seg_ord as u32, doc);
                if ok && seen.insert(addr) {
                    out.push((score, addr));
                }
                seeks += 1;
                doc = sets[0].seek(doc + 1);
            }
        }
        for w in 0..ix.len() {
            if ix[w] + 1 < options[w].len() {
                let mut next = ix.clone();
                next[w] += 1;
                if queued.insert(next.clone()) {
                    heap.push(Ranked {
                        score: score_of(&next),
                        ix: next,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A combination in the best-first heap.
struct Ranked {
    score: f32,
    ix: Vec<usize>,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Higher score first; among equals, the lexicographically smaller
        // index vector (the better first word) first, so the order is fixed.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.ix.cmp(&self.ix))
    }
}
