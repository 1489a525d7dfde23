//! The BERT encoder of all-MiniLM-L6-v2, written for this one job: many short texts on a CPU.
//!
//! Differences from a general BERT implementation, all for speed and none visible in the output:
//! * texts are **packed**: the tokens of every text in a pass are rows of one `[tokens, hidden]`
//!   matrix with no padding, so each dense layer is one large matrix product and no work is spent
//!   on pad tokens; only attention looks at text boundaries ([`kernels::attend`]);
//! * query, key and value projections are **fused** into one `[hidden, 3 * hidden]` product, with
//!   the attention scale `1/sqrt(head_dim)` folded into the query weights at load time;
//! * every bias is **fused** into the pass that follows its product: GELU for the intermediate
//!   layer, the residual add and LayerNorm for the two output layers ([`kernels`]);
//! * the matrix products are [`gemm::matmul`] (BLIS, or the `gemm` crate), called directly on
//!   weights stored **input-major** (`[inputs, outputs]`, transposed once at load).
//!
//! The weights are the Hugging Face `BertModel` checkpoint (`model.safetensors`), read as f32.
//!
//! Threads: a pass of more than [`Encoder::SEQUENTIAL_TOKENS`] tokens spreads each step over the
//! encoder's own thread pool (the embedder's whole thread budget, fixed when the model is loaded);
//! a shorter one (a search query) runs on the calling thread alone. Nothing here reads the
//! environment or uses rayon's global pool.

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::gemm::{Large, matmul};
use super::kernels::{self, Norm, Scratch};
use crate::EmbedError;

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

/// The checkpoint's tensors, read as f32 with their shapes checked.
struct Checkpoint<'a>(SafeTensors<'a>);

impl Checkpoint<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let bad =
            |what: String| EmbedError::Inference(format!("model.safetensors: {name}: {what}"));
        let view = self.0.tensor(name).map_err(|e| bad(e.to_string()))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("dtype {:?} (only F32)", view.dtype())));
        }
        if view.shape() != shape {
            return Err(bad(format!("shape {:?}, expected {shape:?}", view.shape())));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// A dense layer `x W + b` with `W` stored **input-major** (`[inputs, outputs]`, row-major), the
/// transpose of the checkpoint's `[outputs, inputs]`: the layout both GEMM backends read best
/// (the `gemm` crate reads it in place for a query's few rows; see `gemm.rs`).
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    /// From the checkpoint's `[outputs, inputs]` weight.
    fn new(weight: &[f32], bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        let mut t = vec![0f32; inputs * outputs];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                t[i * outputs + o] = w;
            }
        }
        Self {
            weight: t,
            bias,
            inputs,
            outputs,
        }
    }

    fn load(
        ck: &Checkpoint<'_>,
        prefix: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Self, EmbedError> {
        let weight = ck.get(&format!("{prefix}.weight"), &[outputs, inputs])?;
        let bias = ck.get(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Self::new(&weight, bias, inputs, outputs))
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(ck: &Checkpoint<'_>, prefix: &str, size: usize, eps: f64) -> Result<Self, EmbedError> {
        Ok(Self {
            gamma: ck.get(&format!("{prefix}.weight"), &[size])?,
            beta: ck.get(&format!("{prefix}.bias"), &[size])?,
            eps: eps as f32,
        })
    }

    fn params(&self) -> Norm<'_> {
        Norm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: self.eps,
        }
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
    /// Word embeddings `[vocab, hidden]`, row-major (rows are gathered by hand).
    words: Vec<f32>,
    /// Position embeddings `[max_positions, hidden]` with token type 0 already added.
    positions: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    /// The best instruction set the kernels may use on this CPU (chosen once).
    arch: pulp::Arch,
    /// Which library multiplies the large products.
    large: Large,
    /// The embedder's threads; `None` for a budget of one (everything on the caller's thread).
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

/// Where the steps of one pass run.
#[derive(Clone, Copy)]
enum Exec<'a> {
    /// On the calling thread.
    Inline,
    /// Spread over the encoder's pool.
    Pool(&'a rayon::ThreadPool, usize),
}

impl Exec<'_> {
    /// Calls `f(first_row, block)` on blocks of whole rows of `out` (rows `width` wide): one block
    /// per thread for the matrix products (`per_thread`), blocks of [`ROWS_PER_TASK`] rows
    /// otherwise.
    fn rows<F>(self, out: &mut [f32], width: usize, per_thread: bool, f: F)
    where
        F: Fn(usize, &mut [f32]) + Send + Sync,
    {
        let rows = out.len() / width.max(1);
        match self {
            Exec::Inline => f(0, out),
            Exec::Pool(pool, threads) => {
                let block = if per_thread {
                    rows.div_ceil(threads).max(1)
                } else {
                    ROWS_PER_TASK
                };
                pool.install(|| {
                    out.par_chunks_mut(block * width)
                        .enumerate()
                        .for_each(|(i, chunk)| f(i * block, chunk));
                });
            }
        }
    }
}

/// Rows handed to one task by the row-wise kernels (GELU, LayerNorm).
const ROWS_PER_TASK: usize = 64;

impl Encoder {
    /// Loads the encoder from the bytes of `model.safetensors`, with a pool of `threads` threads
    /// and `large` for the large matrix products.
    pub(crate) fn load(
        weights: &[u8],
        config: &Config,
        threads: usize,
        large: Large,
    ) -> Result<Self, EmbedError> {
        config
            .check()
            .map_err(|e| EmbedError::Inference(format!("config.json: {e}")))?;
        let ck = Checkpoint(
            SafeTensors::deserialize(weights)
                .map_err(|e| EmbedError::Inference(format!("model.safetensors: {e}")))?,
        );
        let c = config;
        let (hidden, heads) = (c.hidden_size, c.num_attention_heads);
        let eps = c.layer_norm_eps;
        let words = ck.get("embeddings.word_embeddings.weight", &[c.vocab_size, hidden])?;
        let types = ck.get("embeddings.token_type_embeddings.weight", &[2, hidden])?;
        let mut positions = ck.get(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, hidden],
        )?;
        for row in positions.chunks_exact_mut(hidden) {
            row.iter_mut()
                .zip(&types[..hidden])
                .for_each(|(p, t)| *p += t);
        }
        let embed_norm = LayerNorm::load(&ck, "embeddings.LayerNorm", hidden, eps)?;

        let scale = 1.0 / ((hidden / heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            let att = format!("{l}.attention.self");
            let mut qkv_w = Vec::with_capacity(3 * hidden * hidden);
            let mut qkv_b = Vec::with_capacity(3 * hidden);
            for (part, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                let w = ck.get(&format!("{att}.{part}.weight"), &[hidden, hidden])?;
                let b = ck.get(&format!("{att}.{part}.bias"), &[hidden])?;
                qkv_w.extend(w.iter().map(|x| x * factor));
                qkv_b.extend(b.iter().map(|x| x * factor));
            }
            layers.push(Layer {
                qkv: Dense::new(&qkv_w, qkv_b, hidden, 3 * hidden),
                attn_out: Dense::load(&ck, &format!("{l}.attention.output.dense"), hidden, hidden)?,
                attn_norm: LayerNorm::load(
                    &ck,
                    &format!("{l}.attention.output.LayerNorm"),
                    hidden,
                    eps,
                )?,
                intermediate: Dense::load(
                    &ck,
                    &format!("{l}.intermediate.dense"),
                    hidden,
                    c.intermediate_size,
                )?,
                out: Dense::load(
                    &ck,
                    &format!("{l}.output.dense"),
                    c.intermediate_size,
                    hidden,
                )?,
                out_norm: LayerNorm::load(&ck, &format!("{l}.output.LayerNorm"), hidden, eps)?,
            });
        }
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("heimdex-embed-{i}"))
                    .build()
                    .map_err(|e| EmbedError::Inference(format!("embedder thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            words,
            positions,
            embed_norm,
            layers,
            hidden,
            heads,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
            arch: pulp::Arch::new(),
            large,
            pool,
            threads,
        })
    }

    pub(crate) fn hidden(&self) -> usize {
        self.hidden
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    pub(crate) fn large(&self) -> Large {
        self.large
    }

    /// Floating-point operations of one pass over texts of these token counts: the matrix
    /// products (2 per multiply-add) of every layer, and attention's two products per head.
    /// The element-wise steps (GELU, LayerNorm, softmax) are left out, as is usual.
    pub(crate) fn flops(&self, lens: &[usize]) -> f64 {
        let tokens: usize = lens.iter().sum();
        let per_token: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.attn_out, &l.intermediate, &l.out]
                    .iter()
                    .map(|d| 2 * d.inputs * d.outputs)
                    .sum::<usize>()
            })
            .sum();
        // scores = q kᵀ and context = p v: 2 · len² · hidden each, per layer.
        let attention: usize =
            lens.iter().map(|&n| 4 * n * n * self.hidden).sum::<usize>() * self.layers.len();
        (tokens * per_token + attention) as f64
    }

    /// Passes of at most this many tokens run on the calling thread: a search query (5-12 words,
    /// about 8-20 tokens) takes a few milliseconds, and spreading its tiny matrices over two
    /// threads cost more in hand-offs than it saved (query p50 3.3 -> 2.6 ms, p99 7.7 -> 5.8 ms
    /// on the two-core bench machine; docs/BENCHMARKS.md, "Query embedding"). 64 leaves room for
    /// longer queries.
    pub(crate) const SEQUENTIAL_TOKENS: usize = 64;

    /// Mean-pooled, L2-normalised embeddings of packed texts: `ids` holds every text's token ids
    /// back to back, `lens` each text's count. One vector per text, in order.
    ///
    /// `between` is called after every step of the pass (a matrix product, attention, a
    /// LayerNorm; about 30 a pass), on the calling thread, with no step in flight: the embedding
    /// queue runs waiting search queries there, so a query waits for one step, not a pass.
    pub(crate) fn embed_packed(
        &self,
        ids: &[u32],
        lens: &[usize],
        between: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let exec = match &self.pool {
            Some(pool) if ids.len() > Self::SEQUENTIAL_TOKENS => Exec::Pool(pool, self.threads),
            Some(_) | None => Exec::Inline,
        };
        self.forward(ids, lens, exec, between)
    }

    /// `out = x · W` for every row, row blocks spread over the pool, then `between`.
    fn product(&self, exec: Exec<'_>, x: &[f32], dense: &Dense, out: &mut [f32], accumulate: bool) {
        let (k, n, large) = (dense.inputs, dense.outputs, self.large);
        exec.rows(out, n, true, |first, block| {
            let rows = block.len() / n;
            let x = &x[first * k..(first + rows) * k];
            matmul(large, x, &dense.weight, block, (rows, k, n), accumulate);
        });
    }

    fn forward(
        &self,
        ids: &[u32],
        lens: &[usize],
        exec: Exec<'_>,
        between: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let h = self.hidden;
        let tokens = ids.len();
        if lens.iter().sum::<usize>() != tokens {
            return Err(EmbedError::Inference(
                "token counts do not add up to the packed ids".into(),
            ));
        }
        // Embeddings: word row + (position row + token type 0 row), then LayerNorm.
        let mut x = Vec::with_capacity(tokens * h);
        let mut next = ids.iter();
        for &len in lens {
            if len > self.max_positions {
                return Err(EmbedError::Inference(format!(
                    "{len} tokens exceed {} positions",
                    self.max_positions
                )));
            }
            for pos in 0..len {
                let id = next.next().map_or(0, |&id| id as usize);
                if id >= self.vocab {
                    return Err(EmbedError::Inference(format!(
                        "token id {id} outside the vocabulary"
                    )));
                }
                let word = &self.words[id * h..(id + 1) * h];
                let position = &self.positions[pos * h..(pos + 1) * h];
                x.extend(word.iter().zip(position).map(|(w, p)| w + p));
            }
        }
        let arch = self.arch;
        let norm = self.embed_norm.params();
        exec.rows(&mut x, h, false, |_, rows| {
            kernels::add_norm(arch, rows, None, &norm)
        });

        let inner_width = self.layers.first().map_or(0, |l| l.intermediate.outputs);
        let mut qkv = vec![0f32; tokens * 3 * h];
        let mut context = vec![0f32; tokens * h];
        let mut projected = vec![0f32; tokens * h];
        let mut inner = vec![0f32; tokens * inner_width];
        for layer in &self.layers {
            // q, k, v: the bias first, the product accumulated onto it.
            let bias = &layer.qkv.bias;
            exec.rows(&mut qkv, 3 * h, false, |_, rows| {
                kernels::fill_rows(arch, rows, bias)
            });
            self.product(exec, &x, &layer.qkv, &mut qkv, true);
            between();
            self.attention(exec, &qkv, lens, &mut context);
            between();
            self.product(exec, &context, &layer.attn_out, &mut projected, false);
            between();
            let (bias, norm) = (&layer.attn_out.bias, layer.attn_norm.params());
            exec.rows(&mut x, h, false, |first, rows| {
                let y = &projected[first * h..first * h + rows.len()];
                kernels::add_norm(arch, rows, Some((y, bias)), &norm);
            });
            let inner = &mut inner[..tokens * layer.intermediate.outputs];
            self.product(exec, &x, &layer.intermediate, inner, false);
            let bias = &layer.intermediate.bias;
            exec.rows(inner, layer.intermediate.outputs, false, |_, rows| {
                kernels::bias_gelu(arch, rows, bias);
            });
            between();
            self.product(exec, inner, &layer.out, &mut projected, false);
            let (bias, norm) = (&layer.out.bias, layer.out_norm.params());
            exec.rows(&mut x, h, false, |first, rows| {
                let y = &projected[first * h..first * h + rows.len()];
                kernels::add_norm(arch, rows, Some((y, bias)), &norm);
            });
            between();
        }

        // Mean pooling over each text's rows, then L2 normalisation.
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

    /// Attention for every text of the pass: each text is one task.
    fn attention(&self, exec: Exec<'_>, qkv: &[f32], lens: &[usize], context: &mut [f32]) {
        let h = self.hidden;
        let mut tasks = Vec::with_capacity(lens.len());
        let (mut qkv_rest, mut out_rest) = (qkv, context);
        for &len in lens {
            let (q, qr) = qkv_rest.split_at(len * 3 * h);
            let (o, or) = out_rest.split_at_mut(len * h);
            tasks.push((q, o));
            (qkv_rest, out_rest) = (qr, or);
        }
        let (arch, heads, head_dim) = (self.arch, self.heads, h / self.heads);
        match exec {
            Exec::Inline => {
                let mut scratch = Scratch::default();
                for (q, o) in tasks {
                    kernels::attend(arch, q, o, heads, head_dim, &mut scratch);
                }
            }
            Exec::Pool(pool, _) => pool.install(|| {
                tasks
                    .into_par_iter()
                    .for_each_init(Scratch::default, |scratch, (q, o)| {
                        kernels::attend(arch, q, o, heads, head_dim, scratch);
                    });
            }),
        }
    }
}
