//! sentence-transformers/all-MiniLM-L6-v2 on the CPU: tokenizer, encoder, pooling.

mod bert;
mod kernels;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::{DEFAULT_MODEL_SUBDIR, EmbedError, Embedder, check_texts, default_model_dir};
use bert::{Config, Encoder};

/// sentence-transformers/all-MiniLM-L6-v2 on the CPU.
///
/// * `model()` is `minilm-l6-v2`.
/// * `model_ver()` is `st-v1-<first 8 hex chars of sha256(model.safetensors)>`: `st-v1` names this
///   pipeline (sentence-transformers semantics: mean pooling, L2 norm, 256-token truncation), the
///   hash pins the weights, so a change of either gives new point ids.
/// * Batching: the texts of a call are packed without padding into passes of at most
///   [`MiniLm::TOKENS_PER_PASS`] tokens (a longer single text still gets its own pass), so a
///   batch costs what its tokens cost, whatever the mix of lengths. Results come back in input
///   order.
pub struct MiniLm {
    encoder: Encoder,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for [`Embedder::token_spans`].
    spans_tokenizer: Tokenizer,
    model_ver: String,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("model_ver", &self.model_ver)
            .field("dim", &self.encoder.hidden())
            .finish_non_exhaustive()
    }
}

impl MiniLm {
    /// Model name.
    pub const NAME: &'static str = "minilm-l6-v2";
    /// Maximum sequence length in tokens (including `[CLS]`/`[SEP]`); longer texts are truncated.
    pub const MAX_TOKENS: usize = 256;
    /// Most tokens in one forward pass: large enough that every dense layer is one big matrix
    /// product, small enough that a pass's activations stay in cache-friendly sizes.
    pub const TOKENS_PER_PASS: usize = 2048;

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

        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
        let encoder = Encoder::load(vb, &config)
            .map_err(|e| EmbedError::Inference(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            encoder,
            tokenizer,
            spans_tokenizer,
            model_ver,
        })
    }

    /// Loads from [`default_model_dir`], or reports where the model was expected.
    pub fn load_default() -> Result<Self, EmbedError> {
        let dir = default_model_dir().unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_SUBDIR));
        Self::load(dir)
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
        self.encoder.hidden()
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
        let mut out = Vec::with_capacity(texts.len());
        let (mut ids, mut lens) = (Vec::new(), Vec::new());
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
            let text_ids = encoding.get_ids();
            if !lens.is_empty() && ids.len() + text_ids.len() > Self::TOKENS_PER_PASS {
                out.extend(self.encoder.embed_packed(&ids, &lens)?);
                ids.clear();
                lens.clear();
            }
            ids.extend_from_slice(text_ids);
            lens.push(text_ids.len());
        }
        if !lens.is_empty() {
            out.extend(self.encoder.embed_packed(&ids, &lens)?);
        }
        Ok(out)
    }
}
