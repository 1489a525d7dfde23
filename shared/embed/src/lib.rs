//! Heimdex's embedders.
//!
//! [`Embedder`] is the synchronous, CPU-bound interface the service uses (callers run it in
//! `spawn_blocking`). [`MiniLm`] is sentence-transformers/all-MiniLM-L6-v2 run with candle:
//! 384-d, mean pooling over the attention mask, L2-normalised, truncation at 256 tokens. Weights
//! come from a local directory in Hugging Face layout (`config.json`, `tokenizer.json`,
//! `model.safetensors`) that `deploy/setup.sh` fills; nothing is downloaded at run time.

mod chunk;
mod mock;
mod registry;

pub use chunk::{Chunk, ChunkOptions, chunk};
pub use mock::Mock;
pub use registry::{ModelError, ModelStatus, Registry};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

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
}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        Self::Inference(e.to_string())
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
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
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

/// sentence-transformers/all-MiniLM-L6-v2 on the CPU.
///
/// * `model()` is `minilm-l6-v2`.
/// * `model_ver()` is `st-v1-<first 8 hex chars of sha256(model.safetensors)>`: `st-v1` names this
///   pipeline (sentence-transformers semantics: mean pooling, L2 norm, 256-token truncation), the
///   hash pins the weights, so a change of either gives new point ids.
/// * Batching: texts are tokenised, sorted by token length and cut into sub-batches of at most
///   [`MiniLm::SUB_BATCH`] texts and [`MiniLm::PADDED_TOKENS`] padded tokens; each sub-batch is
///   padded only to its own longest sequence, so short texts do not pay for long ones. Results are
///   returned in input order.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for [`Embedder::token_spans`].
    spans_tokenizer: Tokenizer,
    device: Device,
    model_ver: String,
    dim: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("model_ver", &self.model_ver)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl MiniLm {
    /// Model name.
    pub const NAME: &'static str = "minilm-l6-v2";
    /// Maximum sequence length in tokens (including `[CLS]`/`[SEP]`); longer texts are truncated.
    pub const MAX_TOKENS: usize = 256;
    /// Largest number of texts in one forward pass.
    pub const SUB_BATCH: usize = 32;
    /// Largest padded size (texts x longest sequence) of one forward pass, so one long text does
    /// not make a batch of short ones pay for its length.
    pub const PADDED_TOKENS: usize = 2048;

    /// Loads the model from a Hugging Face layout directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, EmbedError> {
        let dir = dir.as_ref();
        let file = |name: &str| -> Result<PathBuf, EmbedError> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(EmbedError::ModelMissing {
                    dir: dir.to_path_buf(),
                    missing: name.to_owned(),
                })
            }
        };
        let config_path = file("config.json")?;
        let tokenizer_path = file("tokenizer.json")?;
        let weights_path = file("model.safetensors")?;

        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| EmbedError::Inference(format!("{}: {e}", config_path.display())))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| EmbedError::Inference(format!("{}: {e}", config_path.display())))?;

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: Self::MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None::<PaddingParams>);
        let mut spans_tokenizer = tokenizer.clone();
        spans_tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;

        let weights = std::fs::read(&weights_path)
            .map_err(|e| EmbedError::Inference(format!("{}: {e}", weights_path.display())))?;
        let digest = hex::encode(Sha256::digest(&weights));
        let model_ver = format!("st-v1-{}", &digest[..8]);

        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            spans_tokenizer,
            device,
            model_ver,
            dim: config.hidden_size,
        })
    }

    /// Loads from [`default_model_dir`], or reports where the model was expected.
    pub fn load_default() -> Result<Self, EmbedError> {
        let dir = default_model_dir().unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_SUBDIR));
        Self::load(dir)
    }

    fn forward(&self, encodings: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let n = encodings.len();
        let max_len = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; n * max_len];
        let mut mask = vec![0u32; n * max_len];
        for (row, enc) in encodings.iter().enumerate() {
            let base = row * max_len;
            for (j, (&id, &m)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_attention_mask())
                .enumerate()
            {
                ids[base + j] = id;
                mask[base + j] = m;
            }
        }
        let ids = Tensor::from_vec(ids, (n, max_len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, max_len), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // (n, L, d)
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, L, 1)
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?; // (n, d)
        let counts = mask_f.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let normed = mean.broadcast_div(&norm)?;
        Ok(normed.to_vec2::<f32>()?)
    }
}

impl Embedder for MiniLm {
    fn model(&self) -> &str {
        Self::NAME
    }

    fn model_ver(&self) -> &str {
        &self.model_ver
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        Self::MAX_TOKENS
    }

    fn special_tokens(&self) -> usize {
        2
    }

    fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>, EmbedError> {
        let encoding = self
            .spans_tokenizer
            .encode(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_offsets().to_vec())
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        check_texts(texts)?;
        let mut encodings = Vec::with_capacity(texts.len());
        for t in texts {
            encodings.push(
                self.tokenizer
                    .encode(*t, true)
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))?,
            );
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings.get(i).map_or(0, |e| e.len()));

        // Cut the length-sorted order into sub-batches: at most SUB_BATCH texts and at most
        // PADDED_TOKENS padded tokens each (a sub-batch always holds at least one text).
        let len_of = |i: usize| encodings.get(i).map_or(0, |e| e.len());
        let mut chunks: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        for (k, &i) in order.iter().enumerate() {
            let n = k - start + 1;
            if k > start && (n > Self::SUB_BATCH || n * len_of(i) > Self::PADDED_TOKENS) {
                chunks.extend(order.get(start..k));
                start = k;
            }
        }
        chunks.extend(order.get(start..).filter(|c| !c.is_empty()));

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in chunks {
            let batch: Vec<&tokenizers::Encoding> =
                chunk.iter().filter_map(|&i| encodings.get(i)).collect();
            let vectors = self.forward(&batch)?;
            for (&i, v) in chunk.iter().zip(vectors) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = v;
                }
            }
        }
        Ok(out)
    }
}
