//! Synthetic English-like texts for the benchmarks: deterministic for a seed, of mixed length
//! (5 to 120 words, about 7 to 160 tokens), like the segments and chunks a service sees.

use std::io::Write as _;
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const WORDS: &[&str] = &[
    "the",
    "a",
    "search",
    "vector",
    "model",
    "service",
    "data",
    "event",
    "stream",
    "query",
    "result",
    "document",
    "text",
    "index",
    "store",
    "tenant",
    "worker",
    "system",
    "network",
    "memory",
    "cache",
    "latency",
    "throughput",
    "request",
    "response",
    "error",
    "retry",
    "server",
    "client",
    "cluster",
    "node",
    "shard",
    "replica",
    "write",
    "read",
    "update",
    "delete",
    "batch",
    "job",
    "status",
    "progress",
    "token",
    "sentence",
    "paragraph",
    "language",
    "meaning",
    "similar",
    "distance",
    "cosine",
    "embedding",
    "neural",
    "network",
    "training",
    "weights",
    "layer",
    "attention",
    "transformer",
    "encoder",
    "pooling",
    "mean",
    "normal",
    "fast",
    "slow",
    "large",
    "small",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "river",
    "mountain",
    "forest",
    "city",
    "street",
    "house",
    "garden",
    "tree",
    "flower",
    "bread",
    "coffee",
    "music",
    "guitar",
    "piano",
    "song",
    "film",
    "book",
    "story",
    "history",
    "science",
    "physics",
    "chemistry",
    "biology",
    "planet",
    "star",
    "galaxy",
    "ocean",
    "island",
    "weather",
    "rain",
    "snow",
    "summer",
    "winter",
    "morning",
    "evening",
    "people",
    "team",
    "game",
    "match",
    "goal",
    "player",
    "coach",
    "school",
    "student",
    "teacher",
    "lesson",
    "market",
    "price",
    "money",
    "bank",
    "company",
    "product",
    "customer",
    "is",
    "are",
    "was",
    "were",
    "has",
    "have",
    "will",
    "can",
    "should",
    "must",
    "and",
    "or",
    "but",
    "with",
    "without",
    "from",
    "into",
    "about",
    "after",
    "before",
    "because",
    "while",
    "quickly",
    "carefully",
    "often",
    "never",
    "always",
    "again",
    "today",
    "tomorrow",
];

/// Longest text, in words.
pub const MAX_WORDS: usize = 120;

/// `n` texts for `seed`, of 5 to `max_words` words.
pub fn texts(n: usize, seed: u64, max_words: usize) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let span = max_words.max(5) as u32 - 4;
    (0..n)
        .map(|_| {
            let words = 5 + (rng.next_u32() % span) as usize;
            let mut text = String::new();
            for w in 0..words {
                let word = WORDS[(rng.next_u32() as usize) % WORDS.len()];
                if w > 0 {
                    text.push(' ');
                }
                text.push_str(word);
                if w + 1 == words || rng.next_u32() % 12 == 0 {
                    text.push('.');
                }
            }
            text
        })
        .collect()
}

pub fn write(out: &Path, n: usize, seed: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    for text in texts(n, seed, MAX_WORDS) {
        writeln!(file, "{}", serde_json::json!({ "text": text }))?;
    }
    file.flush()?;
    println!("wrote {n} texts to {}", out.display());
    Ok(())
}

/// Reads JSON lines `{"text": …}`, or plain lines.
pub fn read(path: &Path) -> anyhow::Result<Vec<String>> {
    let content = std::fs::read_to_string(path)?;
    Ok(content
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["text"].as_str().map(str::to_owned))
                .unwrap_or_else(|| line.to_owned())
        })
        .collect())
}
