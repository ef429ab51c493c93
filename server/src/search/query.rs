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
pub const SEEKS_MAX: u64 = 100_000;

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

/// The present tiers of every term, by word, alternative and term.
type Tiers = Vec<Vec<Vec<Vec<(f32, Source)>>>>;

fn all_tiers(
    searcher: &Searcher,
    fields: &KindFields,
    words: &[analyze::QueryWord],
    dfas: &[Vec<Vec<Option<DFA>>>],
) -> Result<Tiers> {
    let mut out = Vec::with_capacity(words.len());
    for (word, word_dfas) in words.iter().zip(dfas) {
        let mut alts = Vec::with_capacity(word.len());
        for (alternative, alt_dfas) in word.iter().zip(word_dfas) {
            let mut terms = Vec::with_capacity(alternative.len());
            for (t, dfa) in alternative.iter().zip(alt_dfas) {
                terms.push(term_tiers(searcher, fields, t, dfa.as_ref())?);
            }
            alts.push(terms);
        }
        out.push(alts);
    }
    Ok(out)
}

/// The options of every word, each list sorted by decreasing score. An
/// empty list: that word matches nothing here.
fn word_options(tiers: &Tiers) -> Vec<Vec<WordOption>> {
    let mut out = Vec::with_capacity(tiers.len());
    for word in tiers {
        let mut options: Vec<WordOption> = Vec::new();
        for alternative in word {
            // The cross product of the terms' tiers: small, since only
            // present tiers count (and an alternative has few terms).
            let mut partial: Vec<(f32, Vec<Source>)> = vec![(0.0, Vec::new())];
            for term_tiers in alternative {
                let mut next = Vec::with_capacity(partial.len() * term_tiers.len());
                for (sum, sources) in &partial {
                    for (score, source) in term_tiers {
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
    out
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

/// Most documents [`score_candidates`] scores.
#[cfg(test)]
const CANDIDATES_MAX: usize = 1_000;

/// A tree of document sets: postings, any of, all of (with its current
/// document).
#[cfg(test)]
enum Node {
    Leaf(Postings),
    Or(Vec<Node>),
    And(Vec<Node>, DocId),
}

#[cfg(test)]
impl Node {
    /// All of `children`, positioned on their first common document.
    fn all(mut children: Vec<Node>, seeks: &mut u64) -> Node {
        let doc = align(&mut children, 0, seeks);
        Node::And(children, doc)
    }

    fn doc(&self) -> DocId {
        match self {
            Node::Leaf(p) => p.doc(),
            Node::Or(c) => c.iter().map(Node::doc).min().unwrap_or(TERMINATED),
            Node::And(_, d) => *d,
        }
    }

    /// Moves to the first document at or after `target`.
    fn seek(&mut self, target: DocId, seeks: &mut u64) -> DocId {
        *seeks += 1;
        match self {
            Node::Leaf(p) => p.seek(target),
            Node::Or(c) => {
                let mut min = TERMINATED;
                for n in c.iter_mut() {
                    let d = if n.doc() < target {
                        n.seek(target, seeks)
                    } else {
                        n.doc()
                    };
                    min = min.min(d);
                }
                min
            }
            Node::And(c, d) => {
                if *d < target {
                    *d = align(c, target, seeks);
                }
                *d
            }
        }
    }
}

/// Moves every child to the first document at or after `target` that all
/// of them hold.
#[cfg(test)]
fn align(children: &mut [Node], target: DocId, seeks: &mut u64) -> DocId {
    if children.is_empty() {
        return TERMINATED;
    }
    let mut candidate = target;
    loop {
        let mut moved = false;
        for c in children.iter_mut() {
            let d = if c.doc() < candidate {
                c.seek(candidate, seeks)
            } else {
                c.doc()
            };
            if d > candidate {
                candidate = d;
                moved = true;
            }
        }
        if candidate == TERMINATED || !moved {
            return candidate;
        }
    }
}

/// The tests' reference for [`walk`]: when at most [`CANDIDATES_MAX`]
/// documents match every word, scores each of them exactly (every tier's
/// postings sought in document order) and returns the best `want`; `None`
/// when more match. (As a first step of real queries it cost more than it
/// saved: reaching its cap on two common words decodes most of their
/// postings, where the walk stops after `want`.)
#[cfg(test)]
fn score_candidates(
    searcher: &Searcher,
    tiers: &Tiers,
    filter: &Filter,
    want: usize,
    seeks: &mut u64,
) -> Result<Option<Vec<(f32, DocAddress)>>> {
    let mut candidates: Vec<DocAddress> = Vec::new();
    for (seg_ord, seg) in searcher.segment_readers().iter().enumerate() {
        let mut words = Vec::with_capacity(tiers.len());
        for word in tiers {
            let mut alts = Vec::with_capacity(word.len());
            for alt in word {
                let mut terms = Vec::with_capacity(alt.len());
                for term_tiers in alt {
                    let mut ps = Vec::new();
                    for (_, source) in term_tiers {
                        if let Some(Postings(p)) = open(seg, source)? {
                            ps.extend(p);
                        }
                    }
                    terms.push(Node::Leaf(Postings(ps)));
                }
                alts.push(Node::all(terms, seeks));
            }
            words.push(Node::Or(alts));
        }
        if let Some(kind) = &filter.kind {
            if let Some(p) = open(seg, &Source::Term(kind.clone()))? {
                words.push(Node::Leaf(p));
            } else {
                continue;
            }
        }
        let mut root = Node::all(words, seeks);
        let alive = seg.alive_bitset();
        let mut doc = root.doc();
        while doc != TERMINATED {
            if *seeks >= SEEKS_MAX {
                return Ok(None);
            }
            if alive.is_none_or(|a| a.is_alive(doc)) {
                candidates.push(DocAddress::new(seg_ord as u32, doc));
                if candidates.len() > CANDIDATES_MAX {
                    return Ok(None);
                }
            }
            doc = root.seek(doc + 1, seeks);
        }
    }
    let mut scored = Vec::with_capacity(candidates.len());
    for (seg_ord, seg) in searcher.segment_readers().iter().enumerate() {
        let docs: Vec<DocId> = candidates
            .iter()
            .filter(|a| a.segment_ord as usize == seg_ord)
            .map(|a| a.doc_id)
            .collect();
        if docs.is_empty() {
            continue;
        }
        // Fresh postings of every tier, [word][alternative][term][tier].
        let mut open_tiers = Vec::with_capacity(tiers.len());
        for word in tiers {
            let mut alts = Vec::with_capacity(word.len());
            for alt in word {
                let mut terms = Vec::with_capacity(alt.len());
                for term_tiers in alt {
                    let mut t = Vec::with_capacity(term_tiers.len());
                    for (score, source) in term_tiers {
                        t.push((*score, open(seg, source)?));
                    }
                    terms.push(t);
                }
                alts.push(terms);
            }
            open_tiers.push(alts);
        }
        for doc in docs {
            let mut total = 0.0f32;
            for word in open_tiers.iter_mut() {
                let mut best_word: Option<f32> = None;
                for alt in word.iter_mut() {
                    let n = alt.len().max(1) as f32;
                    let mut sum = 0.0f32;
                    let mut all = true;
                    for term in alt.iter_mut() {
                        // Tiers are best first: the first holding `doc`.
                        let mut best = None;
                        for (score, p) in term.iter_mut() {
                            if let Some(p) = p {
                                *seeks += 1;
                                if p.seek(doc) == doc {
                                    best = Some(*score);
                                    break;
                                }
                            }
                        }
                        match best {
                            Some(b) => sum += b,
                            None => all = false,
                        }
                    }
                    if all {
                        let mean = sum / n;
                        best_word = Some(best_word.map_or(mean, |b| b.max(mean)));
                    }
                }
                total += best_word.unwrap_or(0.0);
            }
            scored.push((total, DocAddress::new(seg_ord as u32, doc)));
        }
    }
    // Stable: equal scores stay in document order, as in the walk.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.truncate(want);
    Ok(Some(scored))
}

/// A filter on the documents taken (besides being alive): holding this
/// term (the kind), intersected like any other.
pub struct Filter {
    pub kind: Option<Term>,
}

/// Collects, for one kind of document, up to `want` documents in
/// decreasing score order (see the module doc).
pub fn top_documents(
    searcher: &Searcher,
    fields: &KindFields,
    words: &[analyze::QueryWord],
    dfas: &[Vec<Vec<Option<DFA>>>],
    filter: &Filter,
    want: usize,
) -> Result<Vec<(f32, DocAddress)>> {
    if words.is_empty() || want == 0 {
        return Ok(Vec::new());
    }
    let tiers = all_tiers(searcher, fields, words, dfas)?;
    let options = word_options(&tiers);
    if options.iter().any(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let mut seeks = 0u64;
    walk(searcher, &options, filter, want, &mut seeks)
}

/// The best-first walk over the combinations of `options` (see the module
/// doc), within the seek budget.
fn walk(
    searcher: &Searcher,
    options: &[Vec<WordOption>],
    filter: &Filter,
    want: usize,
    seeks: &mut u64,
) -> Result<Vec<(f32, DocAddress)>> {
    let mut out = Vec::new();
    if options.is_empty() || options.iter().any(Vec::is_empty) {
        return Ok(out);
    }
    let kind = filter.kind.clone().map(Source::Term);
    let mut seen: HashSet<DocAddress> = HashSet::new();
    // Best-first over the index vectors (one option index per word).
    let score_of = |ix: &[usize]| -> f32 { ix.iter().zip(options).map(|(&i, o)| o[i].score).sum() };
    let mut heap: BinaryHeap<Ranked> = BinaryHeap::new();
    let mut queued: HashSet<Vec<usize>> = HashSet::new();
    let first = vec![0usize; options.len()];
    heap.push(Ranked {
        score: score_of(&first),
        ix: first.clone(),
    });
    queued.insert(first);
    let mut evaluated = 0usize;
    while let Some(Ranked { score, ix }) = heap.pop() {
        if out.len() >= want || evaluated >= COMBINATIONS_MAX || *seeks >= SEEKS_MAX {
            break;
        }
        evaluated += 1;
        let sources: Vec<&Source> = ix
            .iter()
            .zip(options)
            .flat_map(|(&i, o)| o[i].sources.iter())
            .chain(kind.as_ref())
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
            let mut doc = sets[0].doc();
            'docs: while doc != TERMINATED && out.len() < want && *seeks < SEEKS_MAX {
                // Move every list to the first document all of them hold.
                loop {
                    let mut moved = false;
                    for set in sets.iter_mut() {
                        *seeks += 1;
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
                let ok = alive.is_none_or(|a| a.is_alive(doc));
                let addr = DocAddress::new(seg_ord as u32, doc);
                if ok && seen.insert(addr) {
                    out.push((score, addr));
                }
                *seeks += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::Kind;

    /// An index in memory of `n` tracks titled from a small vocabulary, so
    /// words meet often and rarely.
    fn index(n: u64) -> (tantivy::Index, super::super::Fields) {
        let (schema, fields) = super::super::schema();
        let index = tantivy::Index::create_in_ram(schema);
        index.tokenizers().register(
            super::super::TOKENIZER,
            tantivy::tokenizer::TextAnalyzer::builder(
                tantivy::tokenizer::WhitespaceTokenizer::default(),
            )
            .build(),
        );
        let writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let mut docs = super::super::DocWriter {
            writer,
            fields,
            added: 0,
        };
        let vocab = ["love", "lovers", "night", "nights", "fire", "rain", "river"];
        for i in 0..n {
            let w = |k: u64| vocab[((i / k) % vocab.len() as u64) as usize];
            let title = format!("{} {}", w(1), w(7));
            let artist = format!("{} band", w(49));
            let album = format!("{} {}", w(3), w(11));
            let id = format!("{i:032x}");
            docs.add(
                &format!("t:{id}"),
                super::super::TYPE_TRACK,
                if i % 3 == 0 {
                    Kind::Podcast
                } else {
                    Kind::Song
                },
                &id,
                "{}",
                [&title, &artist, &album],
            )
            .unwrap();
        }
        docs.writer.commit().unwrap();
        (index, fields)
    }

    #[test]
    fn scoring_candidates_and_the_walk_agree() {
        let (index, fields) = index(3000);
        let searcher = index.reader().unwrap().searcher();
        let track_fields = &fields.by_type[super::super::TYPE_TRACK];
        for q in [
            "love night",
            "lovr nigth",
            "love lovers",
            "fire rain river",
            "lo ni",
            "night band",
            "rain/river",
        ] {
            let words = analyze::query_words(q);
            let dfas = typo_automata(&words);
            let tiers = all_tiers(&searcher, track_fields, &words, &dfas).unwrap();
            let options = word_options(&tiers);
            let kinds = [None, Some(Term::from_field_text(fields.kind, "podcast"))];
            for kind in kinds {
                let filter = Filter { kind };
                let mut seeks = 0;
                // Room for every match, so both must return them all.
                let want = 100_000;
                let scored =
                    score_candidates(&searcher, &tiers, &filter, want, &mut seeks).unwrap();
                let mut seeks = 0;
                let walked = walk(&searcher, &options, &filter, want, &mut seeks).unwrap();
                let key = |v: &[(f32, DocAddress)]| {
                    let mut k: Vec<(u32, u32, u32)> = v
                        .iter()
                        .map(|(s, a)| ((s * 1000.0) as u32, a.segment_ord, a.doc_id))
                        .collect();
                    k.sort();
                    k
                };
                match scored {
                    Some(scored) => {
                        assert!(!scored.is_empty(), "{q:?} matches something");
                        assert_eq!(key(&scored), key(&walked), "{q:?}");
                        // Best first.
                        assert!(scored.windows(2).all(|w| w[0].0 >= w[1].0), "{q:?}");
                    }
                    // More than CANDIDATES_MAX match: the walk alone answers.
                    None => assert!(walked.len() > CANDIDATES_MAX, "{q:?}"),
                }
                assert!(walked.windows(2).all(|w| w[0].0 >= w[1].0), "{q:?}");
                // A short list is the top of the long one.
                let top =
                    top_documents(&searcher, track_fields, &words, &dfas, &filter, 20).unwrap();
                assert_eq!(top.len(), walked.len().min(20), "{q:?}");
                for (i, (score, _)) in top.iter().enumerate() {
                    assert_eq!(*score, walked[i].0, "{q:?} rank {i}");
                }
                if filter.kind.is_some() {
                    // Podcasts are every third document (see `index`).
                    assert!(walked.iter().all(|(_, a)| a.doc_id % 3 == 0), "{q:?}");
                }
            }
        }
    }

    #[test]
    fn the_seek_budget_bounds_a_query_and_keeps_the_top() {
        let (index, fields) = index(3000);
        let searcher = index.reader().unwrap().searcher();
        let track_fields = &fields.by_type[super::super::TYPE_TRACK];
        let words = analyze::query_words("love night");
        let dfas = typo_automata(&words);
        let tiers = all_tiers(&searcher, track_fields, &words, &dfas).unwrap();
        let options = word_options(&tiers);
        let filter = Filter { kind: None };
        let mut seeks = 0;
        let all = walk(&searcher, &options, &filter, 100_000, &mut seeks).unwrap();
        // Nearly spent already: the walk stops early, with a prefix.
        let mut seeks = SEEKS_MAX - 50;
        let cut = walk(&searcher, &options, &filter, 100_000, &mut seeks).unwrap();
        assert!(cut.len() < all.len());
        for (i, (score, _)) in cut.iter().enumerate() {
            assert_eq!(*score, all[i].0);
        }
    }
}
