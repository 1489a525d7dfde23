//! Fidelity against the models' reference implementations: every golden text's cosine with the
//! reference vector must be at least 0.9999. Uses the real weights; fails (never skips) if they
//! are missing.
//!
//! * all-MiniLM-L6-v2: `tests/data/minilm-l6-v2-golden.jsonl`, a copy of
//!   `shared/reference/minilm-l6-v2-golden.jsonl` (sentence-transformers 6.2.0, torch 2.15.0,
//!   CPU; its first line says so) kept in the repository, so a fresh clone needs nothing beside
//!   it.
//! * paraphrase-MiniLM-L3-v2: `tests/data/paraphrase-minilm-l3-v2-golden.jsonl`, the same texts
//!   run through the packaged ONNX export by onnxruntime (`deploy/models/l3_golden.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Instant;

use heimdex_embed::{Embedder, MiniLm, Products, ThreadBudget, Variant};

const MIN_COSINE: f64 = 0.9999;

#[derive(serde::Deserialize)]
struct Golden {
    text: Option<String>,
    embedding: Option<Vec<f32>>,
}

fn golden_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn golden_cosine_at_least_0_9999() {
    fidelity(Variant::ALL_L6_V2, "minilm-l6-v2-golden.jsonl");
}

#[test]
fn paraphrase_l3_golden_cosine_at_least_0_9999() {
    fidelity(
        Variant::PARAPHRASE_L3_V2,
        "paraphrase-minilm-l3-v2-golden.jsonl",
    );
}

fn fidelity(variant: Variant, golden: &str) {
    let path = golden_path(golden);
    assert!(path.is_file(), "golden file missing: {}", path.display());
    let content = std::fs::read_to_string(&path).unwrap();
    let mut texts = Vec::new();
    let mut refs = Vec::new();
    for (n, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let g: Golden = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), n + 1));
        // The first line is metadata (model, pooling, ...): it has neither text nor embedding.
        if let (Some(t), Some(e)) = (g.text, g.embedding) {
            texts.push(t);
            refs.push(e);
        }
    }
    assert!(!texts.is_empty(), "no golden texts in {}", path.display());

    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Every library the large products can run on (BLIS through the FFI module, whatever
    // kernels it has for this CPU, and the `gemm` crate), with the tests' thread budget, and the
    // automatic choice with a budget of one thread.
    let models: [(&str, MiniLm); 3] = [
        (
            "BLIS",
            common::load_variant(variant, common::threads(), Products::Blis),
        ),
        (
            "gemm crate",
            common::load_variant(variant, common::threads(), Products::GemmCrate),
        ),
        (
            "auto, one thread",
            common::load_variant(variant, ThreadBudget::ONE, Products::Auto),
        ),
    ];
    for (products, model) in &models {
        // All texts in one call: the batch path (one pass of a few hundred tokens).
        let batch = model.embed(&inputs).unwrap();
        // Each text alone: the one-thread path for short passes (a search query), except for the
        // golden texts too long for it, which take the batch path again.
        let alone: Vec<Vec<f32>> = inputs
            .iter()
            .map(|t| model.embed(&[t]).unwrap().pop().unwrap())
            .collect();
        println!(
            "{} {products}: {}, {} threads",
            variant.name,
            model.products(),
            model.threads()
        );
        for (name, got) in [("one batch", &batch), ("one text per call", &alone)] {
            assert_eq!(got.len(), refs.len());
            let mut min = f64::MAX;
            let mut worst = 0;
            let mut sum = 0.0f64;
            for (i, (v, r)) in got.iter().zip(&refs).enumerate() {
                assert_eq!(v.len(), r.len(), "dimension of text {i}");
                let c = cosine(v, r);
                sum += c;
                if c < min {
                    min = c;
                    worst = i;
                }
            }
            #[allow(clippy::cast_precision_loss)]
            let mean = sum / refs.len() as f64;
            println!(
                "{} fidelity ({name}): {} texts, min cosine {min:.9} (text {worst}), mean {mean:.9}, \
             max 1-cos {:.2e}",
                variant.name,
                refs.len(),
                1.0 - min
            );
            assert!(
                min >= MIN_COSINE,
                "{name}: min cosine {min} < {MIN_COSINE} for text {worst}: {:?}",
                texts.get(worst)
            );
        }
    }
    let model = common::load_variant(variant, common::threads(), Products::Auto);

    // Rough throughput on the golden texts (meaningful in --release only).
    let rounds = 5;
    let start = Instant::now();
    for _ in 0..rounds {
        let _ = model.embed(&inputs).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = (rounds * inputs.len()) as f64 / secs;
    println!(
        "throughput: {rate:.1} texts/s ({} texts x {rounds} rounds in {secs:.3}s)",
        inputs.len()
    );
}
