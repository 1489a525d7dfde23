//! Splitting long text into token-bounded, overlapping chunks, cut at sentence boundaries where
//! possible. Pure: it works on the token spans an [`crate::Embedder`] reports, so every chunk is
//! exactly as long as the model will see it.

/// How to cut a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Most tokens per chunk.
    pub max_tokens: usize,
    /// Tokens repeated from the end of one chunk at the start of the next.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            overlap: 32,
        }
    }
}

/// One chunk: byte range (for slicing) and character range (for clients) in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub index: usize,
    pub byte_start: usize,
    pub byte_end: usize,
    /// Offsets in Unicode scalar values (Rust `char`s, Python `str` indices).
    pub char_start: usize,
    pub char_end: usize,
    pub tokens: usize,
}

impl Chunk {
    pub fn text<'a>(&self, document: &'a str) -> &'a str {
        document.get(self.byte_start..self.byte_end).unwrap_or("")
    }
}

/// Cuts `text`, whose tokens are `spans` (byte ranges, in order), into chunks of at most
/// `max_tokens` tokens with `overlap` tokens shared between neighbours.
///
/// A chunk that must be cut ends at the last sentence boundary (a paragraph break, or `.`, `!`,
/// `?` followed by white space) in its second half, if there is one; otherwise it is cut at the
/// token limit. `max_tokens` is at least 1 and `overlap` is less than `max_tokens / 2`
/// (clamped), so chunking always advances.
pub fn chunk(text: &str, spans: &[(usize, usize)], options: ChunkOptions) -> Vec<Chunk> {
    let max = options.max_tokens.max(1);
    let overlap = options.overlap.min(max.saturating_sub(1) / 2);
    let n = spans.len();
    let chars = CharIndex::new(text);
    let ends_sentence = |i: usize| -> bool {
        let Some(&(start, end)) = spans.get(i) else {
            return false;
        };
        let gap_end = spans.get(i + 1).map_or(text.len(), |&(s, _)| s);
        let gap = text.get(end..gap_end).unwrap_or("");
        if gap.matches('\n').count() >= 2 {
            return true;
        }
        let token = text.get(start..end).unwrap_or("");
        token.ends_with(['.', '!', '?']) && gap.starts_with(char::is_whitespace)
    };

    let mut chunks = Vec::new();
    let mut s = 0;
    while s < n {
        let hard = (s + max).min(n);
        let mut e = hard;
        if hard < n {
            let half = s + max / 2;
            if let Some(b) = (half.max(s + 1)..=hard)
                .rev()
                .find(|&b| ends_sentence(b - 1))
            {
                e = b;
            }
        }
        let (byte_start, byte_end) = match (spans.get(s), spans.get(e - 1)) {
            (Some(&(a, _)), Some(&(_, b))) => (a, b),
            _ => break,
        };
        chunks.push(Chunk {
            index: chunks.len(),
            byte_start,
            byte_end,
            char_start: chars.at(byte_start),
            char_end: chars.at(byte_end),
            tokens: e - s,
        });
        if e >= n {
            break;
        }
        s = e.saturating_sub(overlap).max(s + 1);
    }
    chunks
}

/// Byte offset → char offset, by binary search over the char starts.
struct CharIndex {
    starts: Vec<usize>,
}

impl CharIndex {
    fn new(text: &str) -> Self {
        Self {
            starts: text.char_indices().map(|(i, _)| i).collect(),
        }
    }

    fn at(&self, byte: usize) -> usize {
        self.starts.partition_point(|&b| b < byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Embedder, Mock};

    fn words(text: &str) -> Vec<(usize, usize)> {
        Mock::new(1).token_spans(text).expect("spans")
    }

    #[test]
    fn short_text_is_one_chunk() {
        let text = "One short sentence.";
        let chunks = chunk(text, &words(text), ChunkOptions::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text(text), text);
        assert_eq!((chunks[0].char_start, chunks[0].char_end), (0, 19));
    }

    #[test]
    fn empty_text_has_no_chunks() {
        assert!(chunk("  ", &words("  "), ChunkOptions::default()).is_empty());
    }

    #[test]
    fn chunks_are_bounded_overlap_and_cover_everything() {
        let text: String = (0..1000).map(|i| format!("w{i} ")).collect();
        let spans = words(&text);
        let opts = ChunkOptions {
            max_tokens: 100,
            overlap: 10,
        };
        let chunks = chunk(&text, &spans, opts);
        assert!(chunks.iter().all(|c| c.tokens <= 100));
        assert_eq!(chunks.first().map(|c| c.byte_start), Some(0));
        assert_eq!(chunks.last().map(|c| c.byte_end), spans.last().map(|s| s.1));
        let word_no = |c: &Chunk, last: bool| -> usize {
            let t = c.text(&text);
            let w = if last {
                t.split_whitespace().last()
            } else {
                t.split_whitespace().next()
            };
            w.and_then(|w| w.trim_start_matches('w').parse().ok())
                .expect("word")
        };
        for pair in chunks.windows(2) {
            // No sentence ends here: every cut is at the limit, with exactly 10 words shared.
            assert_eq!(word_no(&pair[1], false), word_no(&pair[0], true) + 1 - 10);
        }
        assert_eq!(chunks.len(), 11);
    }

    #[test]
    fn cuts_at_sentence_boundaries() {
        // Sentences of 7 words; a 20-word limit fits two sentences (14 words) per chunk.
        let text: String = (0..10)
            .map(|i| format!("This is sentence number {i} right here. "))
            .collect();
        let spans = words(&text);
        let chunks = chunk(
            &text,
            &spans,
            ChunkOptions {
                max_tokens: 20,
                overlap: 0,
            },
        );
        for c in &chunks {
            assert!(c.text(&text).ends_with("here."), "{:?}", c.text(&text));
            assert!(c.text(&text).starts_with("This"), "{:?}", c.text(&text));
        }
        assert_eq!(chunks.len(), 5);
    }

    #[test]
    fn char_offsets_count_unicode_scalars() {
        let text = "é ü. Ö ä.";
        let chunks = chunk(
            text,
            &words(text),
            ChunkOptions {
                max_tokens: 2,
                overlap: 0,
            },
        );
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[1].char_start, chunks[1].char_end), (5, 9));
        assert_eq!(chunks[1].text(text), "Ö ä.");
        let chars: Vec<char> = text.chars().collect();
        let from_chars: String = chars[5..9].iter().collect();
        assert_eq!(from_chars, "Ö ä.");
    }
}
