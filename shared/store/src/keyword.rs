//! The keyword side of every point: a BM25 sparse vector made by Qdrant's own BM25
//! (`qdrant_edge::bm25_embed::EdgeBm25`), the same code for both adapters.
//!
//! # How BM25 is split between Heimdex and the engine
//!
//! BM25 scores a document `d` for a query `q` as
//! `Σ_{t ∈ q} idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avg_len))`.
//! Heimdex computes the per-document factor (everything but `idf`) when a point is written, as
//! the sparse vector's values, keyed by the term's token id; a query is the set of its token
//! ids with weight 1. The engine multiplies in `idf(t)` at query time: the collection's sparse
//! vector `bm25` is created with Qdrant's IDF modifier, so the engine keeps the document
//! frequencies up to date as points come and go, and nothing has to be recomputed when the
//! corpus grows.
//!
//! Tokenisation is Qdrant's: word tokenizer, lower case, English stop words and the Snowball
//! English stemmer, and murmur3 token ids, exactly what a Qdrant server's own `qdrant/bm25`
//! inference produces. The embedded store and a Qdrant server therefore hold identical sparse
//! vectors and rank alike.
//!
//! # The parameters, and why
//!
//! * `k1 = 1.2`, `b = 0.75`: the standard BM25 parameters (Robertson & Zaragoza), not tuned to
//!   any collection.
//! * `avg_len = 84` BM25 tokens ([`AVG_LEN`]). BM25 wants the corpus's average document
//!   length, but in `EdgeBm25` it is a fixed parameter baked into every stored vector, not a
//!   statistic the engine keeps. Heimdex indexes *chunks*, and the chunker bounds them:
//!   `POST /vectors/documents` cuts at 256 model (WordPiece) tokens, special tokens included,
//!   at a sentence end where it can. A long document is mostly full chunks, so the length of a
//!   full chunk is the average a chunked corpus converges to, whatever its documents' lengths:
//!   `heimdex bench lengths` measures it on English prose (this project's design notes, README
//!   and benchmark write-ups, and the Python service's write-up: 205 full chunks of 225 model
//!   tokens and 83.6 BM25 tokens on average, 0.37 BM25 tokens per model token; figures in
//!   docs/BENCHMARKS.md). Shorter texts (a single short segment, the last chunk of a
//!   document) are scored as shorter than average, which is what BM25 does with short
//!   documents anyway. Changing the value would make existing vectors inconsistent with new
//!   ones, so it is a constant; a new value needs a new vector name and a backfill (see
//!   [`crate::upgrade`]).

use std::sync::OnceLock;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::NotNan;

/// Name of the sparse vector every point carries next to its (unnamed) dense vector.
pub const KEYWORD_VECTOR: &str = "bm25";

/// BM25 term-frequency saturation.
pub const K1: f64 = 1.2;
/// BM25 length normalisation.
pub const B: f64 = 0.75;
/// The average length, in BM25 tokens, documents are normalised against (module docs).
pub const AVG_LEN: f64 = 84.0;

/// A sparse vector: token ids (sorted, unique) and their weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// The BM25 model, built once: its stop-word list and stemmer are not free to construct.
fn model() -> &'static EdgeBm25 {
    static MODEL: OnceLock<EdgeBm25> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = EdgeBm25Config {
            k: not_nan(K1),
            b: not_nan(B),
            avg_len: not_nan(AVG_LEN),
            ..EdgeBm25Config::default()
        };
        match EdgeBm25::new(config) {
            Ok(model) => model,
            // The parameters are constants checked by a unit test; this cannot happen.
            Err(err) => panic!("BM25 parameters rejected: {err}"),
        }
    })
}

fn not_nan(x: f64) -> NotNan<f64> {
    NotNan::new(x).unwrap_or_else(|_| panic!("BM25 parameter is NaN"))
}

/// The sparse vector stored with a point whose text is `text` (empty for no text, or text
/// that is only stop words).
pub fn document(text: &str) -> SparseVector {
    let v = model().embed_document(text);
    SparseVector {
        indices: v.indices,
        values: v.values,
    }
}

/// The sparse query vector for `text`: each distinct token once, weight 1.
pub fn query(text: &str) -> SparseVector {
    let v = model().embed_query(text);
    SparseVector {
        indices: v.indices,
        values: v.values,
    }
}

/// The number of BM25 tokens in `text` (its length as BM25 sees it, stop words dropped,
/// repetitions counted). Used to measure [`AVG_LEN`] against real text.
///
/// `EdgeBm25` does not expose its tokenizer, so the count is read back from a document vector
/// made with `b = 0`, whose values depend only on each term's count `n`:
/// `v = n (k1 + 1) / (n + k1)`, so `n = k1 v / (k1 + 1 − v)`.
pub fn token_count(text: &str) -> usize {
    static COUNTER: OnceLock<EdgeBm25> = OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        let config = EdgeBm25Config {
            k: not_nan(K1),
            b: not_nan(0.0),
            ..EdgeBm25Config::default()
        };
        match EdgeBm25::new(config) {
            Ok(model) => model,
            Err(err) => panic!("BM25 parameters rejected: {err}"),
        }
    });
    counter
        .embed_document(text)
        .values
        .iter()
        .map(|&v| {
            let v = f64::from(v);
            (K1 * v / (K1 + 1.0 - v)).round() as usize
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_accepted() {
        // Builds the model (panics if the constants were invalid).
        assert!(!document("heimdex indexes chunks").is_empty());
    }

    #[test]
    fn query_and_document_share_token_ids() {
        let d = document("Searching the indexes of searchable documents");
        let q = query("searched index");
        assert_eq!(q.values, vec![1.0, 1.0]);
        // Stemming maps "searched"/"searching" and "index"/"indexes" to the same ids.
        for id in &q.indices {
            assert!(d.indices.contains(id), "{q:?} vs {d:?}");
        }
        assert!(d.indices.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
    }

    #[test]
    fn stop_words_and_blank_text_give_empty_vectors() {
        assert!(document("").is_empty());
        assert!(document("the of and").is_empty());
        assert!(query("  ").is_empty());
    }

    #[test]
    fn repeated_terms_saturate_and_long_texts_weigh_less() {
        let once = document("kernel");
        let thrice = document("kernel kernel kernel");
        assert!(thrice.values[0] > once.values[0]);
        assert!(thrice.values[0] < 3.0 * once.values[0]);
        assert!(thrice.values[0] < (K1 + 1.0) as f32);
        let long = document(&format!("kernel {}", "scheduler ".repeat(300)));
        let id = query("kernel").indices[0];
        let weight =
            |v: &SparseVector| v.values[v.indices.iter().position(|i| *i == id).expect("id")];
        assert!(weight(&long) < weight(&once));
    }

    #[test]
    fn token_count_counts_repetitions_without_stop_words() {
        assert_eq!(token_count("the kernel schedules the kernel threads"), 4);
    }
}
