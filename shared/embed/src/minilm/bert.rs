//! The BERT encoder of all-MiniLM-L6-v2, written for this one job: many short texts on a CPU.
//!
//! Differences from a general BERT implementation, all for speed and none visible in the output:
//! * texts are **packed**: the tokens of every text in a pass are rows of one `[tokens, hidden]`
//!   matrix with no padding, so each dense layer is one large GEMM and no work is spent on pad
//!   tokens; only attention looks at text boundaries ([`Attention`]);
//! * query, key and value projections are **fused** into one `[hidden, 3 * hidden]` GEMM, with
//!   the attention scale `1/sqrt(head_dim)` folded into the query weights at load time;
//! * GELU is [`Gelu`], a vectorised exact GELU.
//!
//! Matrix products and LayerNorm are candle's (candle's GEMM runs AVX-512 kernels where the CPU
//! has them). The weights are the Hugging Face `BertModel` checkpoint, read as f32.
//!
//! Passes of at most [`Encoder::SEQUENTIAL_TOKENS`] tokens (a search query) run on one thread,
//! see [`Encoder::embed_packed`].

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use super::kernels::{Attention, Gelu};

/// The fields of a Hugging Face BERT `config.json` this encoder needs; anything else there is
/// ignored, and a config this code cannot run is refused at load time.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_owned()
}

impl Config {
    fn check(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} (only \"gelu\")", self.hidden_act));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// A dense layer `x W + b` with `W` stored **input-major** (`[inputs, outputs]`, contiguous),
/// the transpose of the checkpoint's `[outputs, inputs]`.
///
/// candle hands `gemm` a row-major destination, which `gemm` computes transposed, so the weight
/// becomes gemm's left operand. Stored as in the checkpoint (what `candle_nn::Linear` does), that
/// operand is row-major and `gemm` repacks the whole weight matrix with a strided gather on
/// every call: for a short query (a dozen rows) that repacking was most of the forward pass.
/// Input-major, the operand is column-major with 16-aligned rows, which `gemm` reads in place
/// for a few rows and packs with contiguous copies for many.
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// From the checkpoint's `[outputs, inputs]` weight.
    fn new(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight: weight.t()?.contiguous()?,
            bias,
        })
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

struct Layer {
    /// `[q | k | v]` projection, `hidden -> 3 * hidden`, q pre-scaled.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    intermediate: Dense,
    out: Dense,
    out_norm: LayerNorm,
}

pub(crate) struct Encoder {
    /// Word embeddings `[vocab, hidden]`, as a flat row-major copy (rows are gathered by hand).
    words: Vec<f32>,
    /// Position embeddings `[max_positions, hidden]` with token type 0 already added.
    positions: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    device: Device,
    /// One thread that runs the small passes, see [`Encoder::embed_packed`].
    sequential: rayon::ThreadPool,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    let weight = vb.get(size, "weight")?;
    let bias = vb.get(size, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

fn dense(vb: VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Dense> {
    let weight = vb.get((outputs, inputs), "weight")?;
    let bias = vb.get(outputs, "bias")?;
    Dense::new(&weight, bias)
}

impl Encoder {
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> Result<Self, String> {
        config.check()?;
        Self::load_checked(vb, config).map_err(|e| e.to_string())
    }

    fn load_checked(vb: VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let (hidden, heads) = (c.hidden_size, c.num_attention_heads);
        let eps = c.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let words = emb
            .get((c.vocab_size, hidden), "word_embeddings.weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let types = emb.get((2, hidden), "token_type_embeddings.weight")?;
        let positions = emb
            .get(
                (c.max_position_embeddings, hidden),
                "position_embeddings.weight",
            )?
            .broadcast_add(&types.get(0)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let embed_norm = layer_norm(emb.pp("LayerNorm"), hidden, eps)?;

        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention.self");
            let part = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
                let p = att.pp(name);
                Ok((p.get((hidden, hidden), "weight")?, p.get(hidden, "bias")?))
            };
            let (qw, qb) = part("query")?;
            let (kw, kb) = part("key")?;
            let (vw, vb_) = part("value")?;
            let qkv = Dense::new(
                &Tensor::cat(&[(qw * scale)?, kw, vw], 0)?,
                Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?,
            )?;
            layers.push(Layer {
                qkv,
                attn_out: dense(l.pp("attention.output.dense"), hidden, hidden)?,
                attn_norm: layer_norm(l.pp("attention.output.LayerNorm"), hidden, eps)?,
                intermediate: dense(l.pp("intermediate.dense"), hidden, c.intermediate_size)?,
                out: dense(l.pp("output.dense"), c.intermediate_size, hidden)?,
                out_norm: layer_norm(l.pp("output.LayerNorm"), hidden, eps)?,
            });
        }
        Ok(Self {
            words,
            positions,
            embed_norm,
            layers,
            hidden,
            heads,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
            device: vb.device().clone(),
            sequential: rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "minilm-sequential".to_owned())
                .build()
                .map_err(|e| candle_core::Error::Msg(format!("sequential pool: {e}")))?,
        })
    }

    pub(crate) fn hidden(&self) -> usize {
        self.hidden
    }

    /// Passes of at most this many tokens run on one thread: a search query (5-12 words, about
    /// 8-20 tokens) takes a few milliseconds, and spreading its tiny matrices over two threads
    /// cost more in hand-offs than it saved (query p50 3.3 -> 2.6 ms, p99 7.7 -> 5.8 ms on the
    /// two-core bench machine; docs/BENCHMARKS.md, "Query embedding"). 64 leaves room for longer
    /// queries; the break-even length was not measured.
    pub(crate) const SEQUENTIAL_TOKENS: usize = 64;

    /// Mean-pooled, L2-normalised embeddings of packed texts: `ids` holds every text's token ids
    /// back to back, `lens` each text's count. One vector per text, in order.
    ///
    /// A pass of up to [`Self::SEQUENTIAL_TOKENS`] tokens runs inside a one-thread rayon pool:
    /// every parallel loop in it (gemm's, candle's LayerNorm, our kernels) then runs inline on
    /// that thread, so the pass costs one hand-off instead of a few per layer. Larger passes use
    /// the global pool, op by op.
    pub(crate) fn embed_packed(
        &self,
        ids: &[u32],
        lens: &[usize],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        if ids.len() <= Self::SEQUENTIAL_TOKENS {
            self.sequential.install(|| self.forward(ids, lens))
        } else {
            self.forward(ids, lens)
        }
    }

    fn forward(&self, ids: &[u32], lens: &[usize]) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        let tokens = ids.len();
        if lens.iter().sum::<usize>() != tokens {
            candle_core::bail!("token counts do not add up to the packed ids");
        }
        // Embeddings: word row + (position row + token type 0 row).
        let mut x = Vec::with_capacity(tokens * h);
        let mut ids = ids.iter();
        for &len in lens {
            if len > self.max_positions {
                candle_core::bail!("{len} tokens exceed {} positions", self.max_positions);
            }
            for pos in 0..len {
                let id = ids.next().map_or(0, |&id| id as usize);
                if id >= self.vocab {
                    candle_core::bail!("token id {id} outside the vocabulary");
                }
                let word = &self.words[id * h..(id + 1) * h];
                let position = &self.positions[pos * h..(pos + 1) * h];
                x.extend(word.iter().zip(position).map(|(w, p)| w + p));
            }
        }
        let mut x = self
            .embed_norm
            .forward(&Tensor::from_vec(x, (tokens, h), &self.device)?)?;

        let attention = Attention {
            lens,
            heads: self.heads,
            head_dim: h / self.heads,
        };
        for layer in &self.layers {
            let context = layer.qkv.forward(&x)?.apply_op1_no_bwd(&attention)?;
            let attended = layer.attn_out.forward(&context)?;
            x = layer.attn_norm.forward(&(attended + &x)?)?;
            let inner = layer.intermediate.forward(&x)?.apply_op1_no_bwd(&Gelu)?;
            let out = layer.out.forward(&inner)?;
            x = layer.out_norm.forward(&(out + &x)?)?;
        }

        // Mean pooling over each text's rows, then L2 normalisation.
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        let mut rows = x.chunks_exact(h);
        let mut vectors = Vec::with_capacity(lens.len());
        for &len in lens {
            let mut v = vec![0f32; h];
            for row in rows.by_ref().take(len) {
                v.iter_mut().zip(row).for_each(|(s, &r)| *s += r);
            }
            let norm = v.iter().map(|s| s * s).sum::<f32>().sqrt();
            // Dividing by the count and by the norm of the sum gives the same unit vector.
            let inv = 1.0 / norm.max(1e-12);
            v.iter_mut().for_each(|s| *s *= inv);
            vectors.push(v);
        }
        Ok(vectors)
    }
}
