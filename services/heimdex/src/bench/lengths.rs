//! `heimdex bench lengths <files>`: how long chunks are as BM25 sees them, the measurement
//! behind BM25's `avg_len` (`heimdex_store::keyword::AVG_LEN`). Each file is cut as
//! `POST /vectors/documents` cuts it (MiniLM's tokenizer, 256 model tokens with the special
//! tokens, 32 shared), and each chunk's BM25 length is counted (stop words dropped).
//!
//! A chunk that is not the last of its file was cut by the token budget: those "full" chunks are
//! what a corpus of long documents is made of, so their mean length is what `avg_len` should be.

use std::path::PathBuf;

use anyhow::Context as _;
use heimdex_embed::{ChunkOptions, Embedder, MiniLm};

pub fn run(files: &[PathBuf]) -> anyhow::Result<()> {
    let model = MiniLm::load_default()?;
    let options = ChunkOptions {
        max_tokens: ChunkOptions::default()
            .max_tokens
            .min(model.max_tokens() - model.special_tokens()),
        ..ChunkOptions::default()
    };
    // (model tokens, BM25 tokens) per chunk, full chunks and last chunks apart.
    let (mut full, mut last) = (Vec::new(), Vec::new());
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        let spans = model.token_spans(&text)?;
        let chunks = heimdex_embed::chunk(&text, &spans, options);
        let n = chunks.len();
        for (i, chunk) in chunks.iter().enumerate() {
            let bm25 = heimdex_store::keyword::token_count(chunk.text(&text));
            let entry = (chunk.tokens, bm25);
            if i + 1 < n {
                full.push(entry);
            } else {
                last.push(entry);
            }
        }
    }
    let line = |what: &str, chunks: &[(usize, usize)]| {
        let model_tokens: usize = chunks.iter().map(|c| c.0).sum();
        let bm25_tokens: usize = chunks.iter().map(|c| c.1).sum();
        let n = chunks.len().max(1) as f64;
        println!(
            "  {what:<13} {:>6} chunks: {:>6.1} model tokens, {:>6.1} BM25 tokens on average \
             ({:.3} BM25 tokens per model token)",
            chunks.len(),
            model_tokens as f64 / n,
            bm25_tokens as f64 / n,
            bm25_tokens as f64 / model_tokens.max(1) as f64
        );
    };
    println!(
        "lengths: {} files, chunks of at most {} model tokens ({} shared)",
        files.len(),
        options.max_tokens,
        options.overlap
    );
    line("full chunks", &full);
    line("last chunks", &last);
    let all: Vec<(usize, usize)> = full.iter().chain(&last).copied().collect();
    line("all chunks", &all);
    println!("  BM25 avg_len in use: {}", heimdex_store::keyword::AVG_LEN);
    Ok(())
}
