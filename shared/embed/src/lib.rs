//! Heimdex's embedders.
//!
//! [`Embedder`] is the synchronous, CPU-bound interface of a model. The service does not call it
//! directly: every embedding (a worker's batch, a search query) goes through the one
//! [`EmbedQueue`] of the process, which runs one forward pass at a time and lets queries go
//! first. [`MiniLm`] is sentence-transformers/all-MiniLM-L6-v2 on the CPU:
//! 384-d, mean pooling over the attention mask, L2-normalised, truncation at 256 tokens. Weights
//! come from a local directory in Hugging Face layout (`config.json`, `tokenizer.json`,
//! `model.safetensors`) that `deploy/setup.sh` fills; nothing is downloaded at run time.

mod chunk;
mod minilm;
mod mock;
mod queue;
mod registry;

pub use chunk::{Chunk, ChunkOptions, chunk};
pub use minilm::{MiniLm, Products, Variant};
pub use mock::Mock;
pub use queue::{EmbedQueue, Priority};
pub use registry::{ModelError, ModelStatus, Registry};

use std::num::NonZeroUsize;
use std::path::PathBuf;

/// Environment variable naming the model directory.
pub const MODEL_DIR_ENV: &str = "HEIMDEX_MODEL_DIR";
/// Where `deploy/setup.sh` installs the weights, relative to the repository root.
pub const DEFAULT_MODEL_SUBDIR: &str = ".tools/models/all-minilm-l6-v2";

/// Errors from loading or running an embedder.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A required model file is absent.
    #[error(
        "model file {missing} is missing from {dir} (run ./deploy/setup.sh or set HEIMDEX_MODEL_DIR)"
    )]
    ModelMissing { dir: PathBuf, missing: String },
    /// Loading or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Loading the weights or the forward pass failed.
    #[error("inference: {0}")]
    Inference(String),
    /// The input cannot be embedded (e.g. empty or whitespace-only text).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The embedding queue stopped (or a forward pass panicked) before answering.
    #[error("the embedding queue stopped before answering")]
    Stopped,
}

/// The embedder's thread budget: how many threads a forward pass may use, all of them owned by
/// the model (MiniLM builds its pool of this size once, when it is loaded). The process decides
/// it once, from its settings (`HEIMDEX_EMBED_THREADS`), before the model is loaded; nothing in
/// the embedder reads the environment or asks the CPU again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadBudget(NonZeroUsize);

impl ThreadBudget {
    pub const ONE: Self = Self(NonZeroUsize::MIN);

    pub fn new(threads: NonZeroUsize) -> Self {
        Self(threads)
    }

    pub fn get(self) -> usize {
        self.0.get()
    }
}

impl Default for ThreadBudget {
    /// Every core this process may run on (`available_parallelism`: CPU affinity and cgroup
    /// quotas included), else one.
    fn default() -> Self {
        Self(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }
}

/// A text embedder. Synchronous and CPU-bound.
pub trait Embedder: Send + Sync {
    /// Model name as stored in payloads and point ids (e.g. `minilm-l6-v2`).
    fn model(&self) -> &str;
    /// Model version as stored in payloads and point ids.
    fn model_ver(&self) -> &str;
    /// Output dimension.
    fn dim(&self) -> usize;
    /// Most tokens the model reads per input, special tokens included; the rest is truncated.
    fn max_tokens(&self) -> usize;
    /// Special tokens added to every input (`[CLS]` and `[SEP]` for BERT models).
    fn special_tokens(&self) -> usize;
    /// Byte ranges of the text's tokens, without special tokens and without truncation: what
    /// chunking counts.
    fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>, EmbedError>;
    /// One vector per text, in input order. Empty or whitespace-only text is
    /// [`EmbedError::InvalidInput`].
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_yielding(texts, &mut || {})
    }
    /// [`Embedder::embed`], calling `between` on the calling thread at points where no
    /// computation is in flight and the model's threads are idle: after every step of each
    /// forward pass. [`EmbedQueue`] runs waiting queries there. A model without passes (the
    /// mock) calls it once.
    fn embed_yielding(
        &self,
        texts: &[&str],
        between: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Refuses empty or whitespace-only texts, naming the first.
pub(crate) fn check_texts(texts: &[&str]) -> Result<(), EmbedError> {
    match texts.iter().position(|t| t.trim().is_empty()) {
        Some(i) => Err(EmbedError::InvalidInput(format!(
            "text {i} is empty or whitespace-only"
        ))),
        None => Ok(()),
    }
}

/// `HEIMDEX_MODEL_DIR` if set (and non-empty), else `.tools/models/all-minilm-l6-v2` found in the
/// current directory or any of its parents.
pub fn default_model_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|a| a.join(DEFAULT_MODEL_SUBDIR))
        .find(|p| p.is_dir())
}
