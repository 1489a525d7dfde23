//! `heimdex bench embed`: the embedder's own throughput on a file of texts, in the same JSON
//! shape as `bench/st_embed.py` prints for sentence-transformers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use heimdex_embed::{Embedder, MiniLm};

use super::{corpus, median, percentile};

pub fn run(texts: &Path, repeat: usize, model_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let texts = corpus::read(texts)?;
    anyhow::ensure!(!texts.is_empty(), "no texts");
    let model = match model_dir {
        Some(dir) => MiniLm::load(dir)?,
        None => MiniLm::load_default()?,
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    model.embed(&refs[..refs.len().min(32)])?; // warm-up
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        let vectors = model.embed(&refs)?;
        runs.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            vectors.len() == refs.len(),
            "embedder returned too few vectors"
        );
    }
    let median_s = median(runs.clone());
    println!(
        "{}",
        serde_json::json!({
            "impl": "heimdex (candle)",
            "model_ver": model.model_ver(),
            "threads": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            "n": texts.len(),
            "runs_s": runs,
            "median_s": median_s,
            "texts_per_s": texts.len() as f64 / median_s,
        })
    );
    Ok(())
}

/// Latency of embedding one short query per call: the `queries` texts `bench search` sends
/// (seed 99, 5-12 words), `repeat` rounds over them, one JSON line per round with p50/p90/p99.
pub fn queries(queries: usize, repeat: usize, model_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let texts = corpus::texts(queries, 99, 12);
    let model = match model_dir {
        Some(dir) => MiniLm::load(dir)?,
        None => MiniLm::load_default()?,
    };
    for text in texts.iter().take(20) {
        model.embed(&[text.as_str()])?; // warm-up
    }
    for round in 1..=repeat {
        let mut latencies = Vec::with_capacity(texts.len());
        for text in &texts {
            let started = Instant::now();
            model.embed(&[text.as_str()])?;
            latencies.push(started.elapsed());
        }
        latencies.sort();
        println!(
            "{}",
            serde_json::json!({
                "impl": "heimdex (candle)",
                "round": round,
                "queries": texts.len(),
                "p50_ms": percentile(&latencies, 0.50).as_secs_f64() * 1e3,
                "p90_ms": percentile(&latencies, 0.90).as_secs_f64() * 1e3,
                "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            })
        );
    }
    Ok(())
}
