//! Behaviour of the MiniLM embedder on the real weights.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use heimdex_embed::{EmbedError, Embedder, MiniLm};

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn dim_name_and_version() {
    let m = common::load_model();
    assert_eq!(m.dim(), 384);
    assert_eq!(m.model(), "minilm-l6-v2");
    let ver = m.model_ver();
    assert!(ver.starts_with("st-v1-"), "{ver}");
    assert_eq!(ver.len(), "st-v1-".len() + 8, "{ver}");
    // Pinned weights (deploy/setup.sh checks the full sha256).
    assert_eq!(ver, "st-v1-53aa5117");
}

#[test]
fn output_is_384_d_and_unit_norm() {
    let m = common::load_model();
    let out = m
        .embed(&[
            "hello world",
            "a somewhat longer sentence about vector search",
            "x",
        ])
        .unwrap();
    assert_eq!(out.len(), 3);
    for v in &out {
        assert_eq!(v.len(), 384);
        assert!((norm(v) - 1.0).abs() < 1e-4, "norm {}", norm(v));
    }
}

#[test]
fn deterministic_and_batch_independent() {
    let m = common::load_model();
    let texts = [
        "short",
        "a much longer text that pads the batch considerably more",
        "mid length text",
    ];
    let a = m.embed(&texts).unwrap();
    let b = m.embed(&texts).unwrap();
    assert_eq!(a, b);
    // Alone vs in a padded batch: same vector up to float noise, and order preserved.
    for (i, t) in texts.iter().enumerate() {
        let single = m.embed(&[t]).unwrap();
        let dot: f32 = single[0].iter().zip(&a[i]).map(|(x, y)| x * y).sum();
        assert!(dot > 0.99999, "text {i}: cosine {dot}");
    }
}

#[test]
fn empty_and_whitespace_text_rejected() {
    let m = common::load_model();
    for bad in ["", "   \n\t"] {
        let err = m.embed(&["fine", bad]).unwrap_err();
        assert!(matches!(err, EmbedError::InvalidInput(_)), "{err}");
    }
    assert!(m.embed(&[]).unwrap().is_empty());
}

#[test]
fn text_longer_than_256_tokens_is_truncated_not_an_error() {
    let m = common::load_model();
    let long = "lorem ipsum dolor sit amet consectetur ".repeat(200);
    let more = format!("{long} and then something else entirely");
    let out = m.embed(&[&long, &more]).unwrap();
    assert_eq!(out[0].len(), 384);
    assert!((norm(&out[0]) - 1.0).abs() < 1e-4);
    // Both truncated at 256 tokens with the same prefix: identical vectors.
    let dot: f32 = out[0].iter().zip(&out[1]).map(|(x, y)| x * y).sum();
    assert!(dot > 0.99999, "cosine {dot}");
}

#[test]
fn missing_model_dir_is_reported() {
    let err = MiniLm::load("/nonexistent/heimdex-model-dir").unwrap_err();
    assert!(
        matches!(&err, EmbedError::ModelMissing { missing, .. } if missing == "config.json"),
        "unexpected {err}"
    );
    assert!(err.to_string().contains("deploy/setup.sh"), "{err}");
}

#[test]
fn token_spans_cover_the_text_without_truncation() {
    let m = common::load_model();
    let text = "Héllo, wörld! Tokenizers split words-into pieces.";
    let spans = m.token_spans(text).unwrap();
    let pieces: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
    assert_eq!(pieces.first(), Some(&"Héllo"));
    assert!(pieces.contains(&"!"), "{pieces:?}");
    assert_eq!(pieces.last(), Some(&"."));
    // Long text is not truncated here (embedding truncates; chunking must see every token).
    let long = "word ".repeat(1000);
    assert_eq!(m.token_spans(&long).unwrap().len(), 1000);
    assert_eq!(m.max_tokens(), 256);
    assert_eq!(m.special_tokens(), 2);
}

/// A short pass (up to 64 tokens, a search query) runs on one thread, a longer one on the
/// rayon pool: the same text must get the same vector either way.
#[test]
fn one_thread_path_matches_the_batch_path() {
    let m = common::load_model();
    let texts = [
        "how do I reset my password",
        "vector search over event-sourced ingestion",
        "a",
        "the quick brown fox jumps over the lazy dog while the cat watches from the fence",
        "semantic search in twelve words or fewer, as a user would type it",
    ];
    // Enough repeats that the call is one pass of well over 64 tokens.
    let many: Vec<&str> = texts
        .iter()
        .cycle()
        .take(texts.len() * 8)
        .copied()
        .collect();
    let batch = m.embed(&many).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = m.embed(&[text]).unwrap().pop().unwrap();
        let diff = alone
            .iter()
            .zip(&batch[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "text {i}: max abs difference {diff:e}");
    }
}
