//! The sentence-transformers MiniLM models on the CPU: tokenizer, encoder, pooling.
//! all-MiniLM-L6-v2 is the default model; paraphrase-MiniLM-L3-v2 ([`Variant::PARAPHRASE_L3_V2`])
//! is a second, smaller one, the same BERT encoder with 3 layers instead of 6.

mod bert;
mod gemm;
mod kernels;

pub use gemm::Products;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::{
    DEFAULT_MODEL_SUBDIR, EmbedError, Embedder, ThreadBudget, check_texts, default_model_dir,
};
use bert::{Config, Encoder};

/// Which MiniLM: its name in the API, its token limit and its directory under `.tools/models`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    /// The model's `max_seq_length`: longer texts are truncated to it (`[CLS]`/`[SEP]`
    /// included).
    pub max_tokens: usize,
    /// Its directory beside the others (`.tools/models/<subdir>`).
    pub subdir: &'static str,
}

impl Variant {
    /// sentence-transformers/all-MiniLM-L6-v2: 6 layers, 256 tokens. The default model.
    pub const ALL_L6_V2: Self = Self {
        name: "minilm-l6-v2",
        max_tokens: 256,
        subdir: "all-minilm-l6-v2",
    };
    /// sentence-transformers/paraphrase-MiniLM-L3-v2: 3 layers, 128 tokens, about twice as
    /// fast. Installed by `deploy/setup.sh` from its ONNX export (see `deploy/models/`).
    pub const PARAPHRASE_L3_V2: Self = Self {
        name: "paraphrase-minilm-l3-v2",
        max_tokens: 128,
        subdir: "paraphrase-minilm-l3-v2",
    };
}

/// A sentence-transformers MiniLM on the CPU ([`Variant`]).
///
/// * `model()` is the variant's name (`minilm-l6-v2`, `paraphrase-minilm-l3-v2`).
/// * `model_ver()` is `st-v1-<first 8 hex chars of sha256(model.safetensors)>`: `st-v1` names this
///   pipeline (sentence-transformers semantics: mean pooling, L2 norm, truncation to the
///   variant's limit), the hash pins the weights, so a change of either gives new point ids.
/// * Batching: the texts of a call are packed without padding into passes of at most
///   [`MiniLm::TOKENS_PER_PASS`] tokens (a longer single text still gets its own pass), so a
///   batch costs what its tokens cost, whatever the mix of lengths. Results come back in input
///   order.
/// * Threads: the [`ThreadBudget`] given at load, as the encoder's own pool; nothing else.
pub struct MiniLm {
    encoder: Encoder,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for [`Embedder::token_spans`].
    spans_tokenizer: Tokenizer,
    model_ver: String,
    variant: Variant,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("model", &self.variant.name)
            .field("model_ver", &self.model_ver)
            .field("dim", &self.encoder.hidden())
            .finish_non_exhaustive()
    }
}

impl MiniLm {
    /// The default model's name.
    pub const NAME: &'static str = Variant::ALL_L6_V2.name;
    /// The default model's maximum sequence length in tokens (including `[CLS]`/`[SEP]`);
    /// longer texts are truncated.
    pub const MAX_TOKENS: usize = Variant::ALL_L6_V2.max_tokens;
    /// Most tokens in one forward pass: large enough that every dense layer is one big matrix
    /// product, small enough that a pass's activations stay in cache-friendly sizes.
    pub const TOKENS_PER_PASS: usize = 2048;

    /// Loads the model from a Hugging Face layout directory, with the default [`ThreadBudget`]
    /// (every core the process may use).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, EmbedError> {
        Self::load_with(dir, ThreadBudget::default())
    }

    /// Loads the model from a Hugging Face layout directory; its forward passes use `threads`.
    pub fn load_with(dir: impl AsRef<Path>, threads: ThreadBudget) -> Result<Self, EmbedError> {
        Self::load_with_products(dir, threads, Products::Auto)
    }

    /// [`MiniLm::load_with`], with the library for the large matrix products named (the
    /// fidelity suite checks each).
    pub fn load_with_products(
        dir: impl AsRef<Path>,
        threads: ThreadBudget,
        products: Products,
    ) -> Result<Self, EmbedError> {
        Self::load_variant(Variant::ALL_L6_V2, dir, threads, products)
    }

    /// Loads `variant` from its Hugging Face layout directory.
    pub fn load_variant(
        variant: Variant,
        dir: impl AsRef<Path>,
        threads: ThreadBudget,
        products: Products,
    ) -> Result<Self, EmbedError> {
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
                max_length: variant.max_tokens,
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

        let encoder = Encoder::load(&weights, &config, threads.get(), products.resolve())?;
        Ok(Self {
            encoder,
            tokenizer,
            spans_tokenizer,
            model_ver,
            variant,
        })
    }

    /// Loads from [`default_model_dir`], or reports where the model was expected.
    pub fn load_default() -> Result<Self, EmbedError> {
        let dir = default_model_dir().unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_SUBDIR));
        Self::load(dir)
    }

    /// The instruction set the encoder's own kernels (GELU, LayerNorm, attention) run with on
    /// this CPU and build: `avx512`, `avx2` or `scalar`.
    pub fn kernel_isa() -> &'static str {
        if Self::avx512() {
            return "avx512";
        }
        #[cfg(target_arch = "x86_64")]
        if pulp::x86::V3::try_new().is_some() {
            return "avx2";
        }
        "scalar"
    }

    /// Whether this build has AVX-512 kernels and this CPU runs them.
    pub(crate) fn avx512() -> bool {
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        if pulp::x86::V4::try_new().is_some() {
            return true;
        }
        false
    }

    /// Threads a forward pass may use.
    pub fn threads(&self) -> usize {
        self.encoder.threads()
    }

    /// Which library runs the large matrix products, and with which kernels (for logs and
    /// benchmarks), e.g. `BLIS 0.9.0 (haswell kernels)`.
    pub fn products(&self) -> String {
        self.encoder.large().describe()
    }

    /// Floating-point operations the encoder performs for `text` (after truncation): its
    /// matrix products, counted from the model's shapes and the text's tokens. What benchmarks
    /// divide by time to get GFLOP/s.
    pub fn flops(&self, text: &str) -> Result<f64, EmbedError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(self.encoder.flops(&[encoding.get_ids().len()]))
    }
}

impl Embedder for MiniLm {
    fn model(&self) -> &str {
        self.variant.name
    }

    fn model_ver(&self) -> &str {
        &self.model_ver
    }

    fn dim(&self) -> usize {
        self.encoder.hidden()
    }

    fn max_tokens(&self) -> usize {
        self.variant.max_tokens
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

    fn embed_yielding(
        &self,
        texts: &[&str],
        between: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
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
                out.extend(self.encoder.embed_packed(&ids, &lens, between)?);
                ids.clear();
                lens.clear();
            }
            ids.extend_from_slice(text_ids);
            lens.push(text_ids.len());
        }
        if !lens.is_empty() {
            out.extend(self.encoder.embed_packed(&ids, &lens, between)?);
        }
        Ok(out)
    }
}
