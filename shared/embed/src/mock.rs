//! The `mock` model (version `v1`): a deterministic vector per text, for tests, benchmarks of the
//! pipeline without inference cost, and clients migrating from the Python service.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::{EmbedError, Embedder, check_texts};

/// `dim` values uniform in `[0, 1)` from a ChaCha20 stream seeded with `sha256("mock:v1:" text)`
/// (top 24 bits of each `u32` draw, scaled by 2^-24, so exact in `f32` on every machine).
/// Token spans are whitespace-separated words.
///
/// `POST /vectors/mock` keeps the Python service's seed (org, asset and segment instead of the
/// text); this embedder is what `model: "mock"` means on the text endpoints.
#[derive(Clone, Debug)]
pub struct Mock {
    dim: usize,
}

impl Mock {
    pub const NAME: &'static str = "mock";
    pub const VERSION: &'static str = "v1";
    /// Words per input, like a real model's truncation, so chunking behaves the same way.
    pub const MAX_TOKENS: usize = 256;

    pub fn new(dim: usize) -> Self {
        Self { dim }
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let seed: [u8; 32] = Sha256::digest(format!("mock:v1:{text}")).into();
        let mut rng = ChaCha20Rng::from_seed(seed);
        const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
        (0..self.dim)
            .map(|_| (rng.next_u32() >> 8) as f32 * SCALE)
            .collect()
    }
}

impl Embedder for Mock {
    fn model(&self) -> &str {
        Self::NAME
    }

    fn model_ver(&self) -> &str {
        Self::VERSION
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        Self::MAX_TOKENS
    }

    fn special_tokens(&self) -> usize {
        0
    }

    fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>, EmbedError> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    spans.push((s, i));
                    start = None;
                }
                (false, None) => start = Some(i),
                (true, None) | (false, Some(_)) => {}
            }
        }
        if let Some(s) = start {
            spans.push((s, text.len()));
        }
        Ok(spans)
    }

    fn embed_yielding(
        &self,
        texts: &[&str],
        between: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        check_texts(texts)?;
        let vectors = texts.iter().map(|t| self.vector(t)).collect();
        between();
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_text() {
        let m = Mock::new(8);
        let v = m.embed(&["a b", "a b", "c"]).expect("embed");
        assert_eq!(v[0], v[1]);
        assert_ne!(v[0], v[2]);
        assert_eq!(v[0].len(), 8);
        assert!(v[0].iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn spans_are_words() {
        let m = Mock::new(4);
        let text = "  héllo wörld\tend ";
        let spans = m.token_spans(text).expect("spans");
        let words: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(words, ["héllo", "wörld", "end"]);
    }

    #[test]
    fn rejects_blank_text() {
        assert!(matches!(
            Mock::new(4).embed(&["ok", " \n"]),
            Err(EmbedError::InvalidInput(_))
        ));
    }
}
