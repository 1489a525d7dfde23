//! `heimdex bench embed`: the embedder's own throughput on a file of texts, in the same JSON
//! shape as `bench/st_embed.py` prints for sentence-transformers, plus the work it did: the
//! encoder's floating-point operations (counted from the model's shapes and each text's tokens)
//! and the GFLOP/s achieved, so that `bench/embedder.sh` can put both implementations against the
//! same count.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use heimdex_embed::{Embedder, MiniLm, Products, ThreadBudget, Variant};

use super::{corpus, median, percentile};

/// Which model to measure, from where, with how many threads.
pub struct Load {
    /// A MiniLM's name (`minilm-l6-v2`, `paraphrase-minilm-l3-v2`).
    pub model: String,
    /// Its directory (default: as the service finds it).
    pub model_dir: Option<PathBuf>,
    pub threads: Option<NonZeroUsize>,
}

impl Load {
    fn load(self) -> anyhow::Result<MiniLm> {
        let variant = [Variant::ALL_L6_V2, Variant::PARAPHRASE_L3_V2]
            .into_iter()
            .find(|v| v.name == self.model)
            .ok_or_else(|| anyhow::anyhow!("no MiniLM named `{}`", self.model))?;
        let threads = self.threads.map(ThreadBudget::new).unwrap_or_default();
        let default = heimdex_embed::default_model_dir()
            .unwrap_or_else(|| PathBuf::from(heimdex_embed::DEFAULT_MODEL_SUBDIR));
        let dir = match (self.model_dir, variant == Variant::ALL_L6_V2) {
            (Some(dir), _) => dir,
            (None, true) => default,
            (None, false) => default
                .parent()
                .map_or_else(|| PathBuf::from(variant.subdir), |p| p.join(variant.subdir)),
        };
        Ok(MiniLm::load_variant(variant, dir, threads, Products::Auto)?)
    }
}

pub fn run(texts: &Path, repeat: usize, load: Load) -> anyhow::Result<()> {
    let texts = corpus::read(texts)?;
    anyhow::ensure!(!texts.is_empty(), "no texts");
    let model = load.load()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut flop = 0.0;
    for text in &refs {
        flop += model.flops(text)?;
    }
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
            "impl": "heimdex",
            "model": model.model(),
            "model_ver": model.model_ver(),
            "threads": model.threads(),
            "kernels": MiniLm::kernel_isa(),
            "products": model.products(),
            "n": texts.len(),
            "gflop": flop / 1e9,
            "runs_s": runs,
            "median_s": median_s,
            "texts_per_s": texts.len() as f64 / median_s,
            "gflop_per_s": flop / 1e9 / median_s,
        })
    );
    Ok(())
}

/// Latency of embedding one short query per call: the `queries` texts `bench search` sends
/// (seed 99, 5-12 words), `repeat` rounds over them, one JSON line per round with p50/p90/p99.
pub fn queries(queries: usize, repeat: usize, load: Load) -> anyhow::Result<()> {
    let texts = corpus::texts(queries, 99, 12);
    let model = load.load()?;
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
                "impl": "heimdex",
                "round": round,
                "threads": model.threads(),
                "queries": texts.len(),
                "p50_ms": percentile(&latencies, 0.50).as_secs_f64() * 1e3,
                "p90_ms": percentile(&latencies, 0.90).as_secs_f64() * 1e3,
                "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            })
        );
    }
    Ok(())
}
