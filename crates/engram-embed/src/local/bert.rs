//! A BERT encoder for sentence embeddings.
//!
//! Same arithmetic as `transformers`' `BertModel` followed by sentence-transformers' mean
//! pooling, arranged for CPU inference of variable-length batches. candle reads and
//! converts the weights (safetensors, dtype, transposition); the forward pass runs on plain
//! buffers with the kernels in `ops`:
//! - sequences are *packed*, never padded: embeddings, projections, the feed-forward block
//!   and layer norms work on `[total_tokens, hidden]`, and attention runs per sequence at its
//!   own length (a batch may mix lengths freely, and no attention mask is needed);
//! - Q, K and V are one matrix product; the 1/sqrt(head_dim) scale is folded into Q's
//!   weights at load time; weights are stored transposed so products are plain `x · W`;
//! - matrix products go to `gemm` (candle's engine) directly, with an explicit thread count;
//! - bias, GELU, residual and layer norm are fused kernels.
//!
//! Threads: matrix products and attention spread over the *current* rayon pool (the
//! caller installs the embedder's pool), up to `threads`.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::ops::{self, Packing};

/// The part of `config.json` this encoder reads.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
}

/// A weight matrix, stored `[in, out]` so that products are plain `x · W`.
struct Linear {
    w: Vec<f32>,
    k: usize,
    n: usize,
}

impl Linear {
    /// From a weight stored `[out, in]` (as `transformers` saves it).
    fn new(w_out_in: Tensor, what: &str, k: usize, n: usize) -> Result<Self, LoadError> {
        if w_out_in.dims() != [n, k] {
            return Err(LoadError::Config(format!(
                "{what} has shape {:?}, config.json implies {:?}",
                w_out_in.dims(),
                [n, k]
            )));
        }
        Ok(Self {
            w: vec1(w_out_in.t()?.contiguous()?)?,
            k,
            n,
        })
    }

    fn forward(&self, x: &[f32], m: usize, threads: usize) -> Vec<f32> {
        ops::matmul(x, m, self.k, &self.w, self.n, threads)
    }
}

struct Layer {
    qkv: Linear, // [hidden, 3 * hidden], Q columns pre-scaled
    qkv_bias: Vec<f32>,
    out: Linear, // [hidden, hidden]
    out_bias: Vec<f32>,
    ln1_gamma: Vec<f32>,
    ln1_beta: Vec<f32>,
    up: Linear, // [hidden, intermediate]
    up_bias: Vec<f32>,
    down: Linear, // [intermediate, hidden]
    down_bias: Vec<f32>,
    ln2_gamma: Vec<f32>,
    ln2_beta: Vec<f32>,
}

pub struct Bert {
    cfg: BertConfig,
    head_dim: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_gamma: Vec<f32>,
    emb_beta: Vec<f32>,
    layers: Vec<Layer>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bad config.json: {0}")]
    Config(String),
    #[error("bad model.safetensors: {0}")]
    Weights(#[from] candle_core::Error),
}

fn vec1(t: Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl Bert {
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let cfg_path = dir.join("config.json");
        let raw = std::fs::read_to_string(&cfg_path).map_err(|source| LoadError::Io {
            path: cfg_path.display().to_string(),
            source,
        })?;
        let cfg: BertConfig =
            serde_json::from_str(&raw).map_err(|e| LoadError::Config(e.to_string()))?;
        if cfg.hidden_act != "gelu" {
            return Err(LoadError::Config(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                cfg.hidden_act
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(LoadError::Config(
                "hidden_size must be a multiple of num_attention_heads".into(),
            ));
        }
        let weights_path = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only for the duration of this function and every
        // tensor is copied out of it; engram never rewrites model files in place (downloads
        // go to a temporary directory that is renamed into place).
        let st = unsafe { MmapedSafetensors::new(&weights_path)? };
        let prefix = if st.get("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let dev = Device::Cpu;
        let get = |name: &str| -> candle_core::Result<Tensor> {
            st.load(&format!("{prefix}{name}"), &dev)?
                .to_dtype(DType::F32)
        };
        // Old checkpoints call layer-norm parameters gamma/beta.
        let get_ln = |base: &str| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let gamma =
                get(&format!("{base}.weight")).or_else(|_| get(&format!("{base}.gamma")))?;
            let beta = get(&format!("{base}.bias")).or_else(|_| get(&format!("{base}.beta")))?;
            Ok((vec1(gamma)?, vec1(beta)?))
        };

        let h = cfg.hidden_size;
        let inter = cfg.intermediate_size;
        let head_dim = h / cfg.num_attention_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let word = vec1(get("embeddings.word_embeddings.weight")?)?;
        let position = vec1(get("embeddings.position_embeddings.weight")?)?;
        let token_type = vec1(get("embeddings.token_type_embeddings.weight")?)?;
        if word.len() != cfg.vocab_size * h
            || position.len() != cfg.max_position_embeddings * h
            || token_type.len() < h
        {
            return Err(LoadError::Config(
                "embedding shapes do not match config.json".into(),
            ));
        }
        let (emb_gamma, emb_beta) = get_ln("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let w = |name: &str| get(&format!("{p}.{name}"));
            let q = (w("attention.self.query.weight")? * scale)?;
            let qkv = Tensor::cat(
                &[
                    q,
                    w("attention.self.key.weight")?,
                    w("attention.self.value.weight")?,
                ],
                0,
            )?;
            let bq = (w("attention.self.query.bias")? * scale)?;
            let qkv_bias = vec1(Tensor::cat(
                &[
                    bq,
                    w("attention.self.key.bias")?,
                    w("attention.self.value.bias")?,
                ],
                0,
            )?)?;
            let (ln1_gamma, ln1_beta) = get_ln(&format!("{p}.attention.output.LayerNorm"))?;
            let (ln2_gamma, ln2_beta) = get_ln(&format!("{p}.output.LayerNorm"))?;
            layers.push(Layer {
                qkv: Linear::new(qkv, "attention Q/K/V", h, 3 * h)?,
                qkv_bias,
                out: Linear::new(
                    w("attention.output.dense.weight")?,
                    "attention output",
                    h,
                    h,
                )?,
                out_bias: vec1(w("attention.output.dense.bias")?)?,
                ln1_gamma,
                ln1_beta,
                up: Linear::new(
                    w("intermediate.dense.weight")?,
                    "intermediate dense",
                    h,
                    inter,
                )?,
                up_bias: vec1(w("intermediate.dense.bias")?)?,
                down: Linear::new(w("output.dense.weight")?, "output dense", inter, h)?,
                down_bias: vec1(w("output.dense.bias")?)?,
                ln2_gamma,
                ln2_beta,
            });
        }
        let l = &layers[..];
        let sizes_ok = emb_gamma.len() == h
            && l.iter().all(|l| {
                l.qkv_bias.len() == 3 * h
                    && l.out_bias.len() == h
                    && l.up_bias.len() == inter
                    && l.down_bias.len() == h
                    && [&l.ln1_gamma, &l.ln1_beta, &l.ln2_gamma, &l.ln2_beta]
                        .iter()
                        .all(|v| v.len() == h)
            });
        if !sizes_ok {
            return Err(LoadError::Config(
                "bias or layer-norm sizes do not match config.json".into(),
            ));
        }
        Ok(Self {
            eps: cfg.layer_norm_eps as f32,
            head_dim,
            word,
            position,
            token_type0: token_type[..h].to_vec(),
            emb_gamma,
            emb_beta,
            layers,
            cfg,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Sentence embeddings of `seqs` (token ids including `[CLS]`/`[SEP]`): the last hidden
    /// state averaged over each sequence's tokens, then L2-normalised. Work is spread over
    /// up to `threads` threads of the current rayon pool.
    pub fn embed(&self, seqs: &[&[u32]], threads: usize) -> Result<Vec<Vec<f32>>, String> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.cfg.hidden_size;
        let packing = Packing::new(seqs.iter().map(|s| s.len()).collect());
        let longest = packing.lens.iter().copied().max().unwrap_or(0);
        if longest > self.cfg.max_position_embeddings {
            return Err(format!(
                "sequence of {longest} tokens exceeds {} positions",
                self.cfg.max_position_embeddings
            ));
        }
        if seqs.iter().any(|s| s.is_empty()) {
            return Err("empty token sequence".into());
        }

        // Embeddings: word + position + token type 0, then layer norm.
        let t = packing.total;
        let mut x = vec![0f32; t * h];
        for (s, ids) in seqs.iter().enumerate() {
            for (pos, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= self.cfg.vocab_size {
                    return Err(format!("token id {id} outside the vocabulary"));
                }
                let row = &mut x[(packing.offsets[s] + pos) * h..][..h];
                let w = &self.word[id * h..][..h];
                let p = &self.position[pos * h..][..h];
                for i in 0..h {
                    row[i] = w[i] + p[i] + self.token_type0[i];
                }
            }
        }
        ops::layer_norm(&mut x, &self.emb_gamma, &self.emb_beta, self.eps);

        let heads = self.cfg.num_attention_heads;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, t, threads);
            let split = ops::split_heads(&qkv, &packing, heads, self.head_dim, &layer.qkv_bias);
            drop(qkv);
            let context = ops::attention(&split, &packing, heads, self.head_dim, threads);
            drop(split);
            let mut attn = layer.out.forward(&context, t, threads);
            ops::add_layer_norm(
                &mut attn,
                &x,
                &layer.out_bias,
                &layer.ln1_gamma,
                &layer.ln1_beta,
                self.eps,
            );
            let mut up = layer.up.forward(&attn, t, threads);
            ops::bias_gelu(&mut up, &layer.up_bias);
            x = layer.down.forward(&up, t, threads);
            drop(up);
            ops::add_layer_norm(
                &mut x,
                &attn,
                &layer.down_bias,
                &layer.ln2_gamma,
                &layer.ln2_beta,
                self.eps,
            );
        }

        // Mean pooling over each sequence's tokens (all real: nothing is padded), then L2
        // normalisation, as sentence-transformers does.
        Ok((0..packing.batch())
            .map(|s| {
                let mut acc = vec![0f64; h];
                for row in x[packing.offsets[s] * h..][..packing.lens[s] * h].chunks_exact(h) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v as f64;
                    }
                }
                let n = packing.lens[s] as f64;
                let norm = acc
                    .iter()
                    .map(|a| (a / n) * (a / n))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                acc.iter().map(|a| (a / n / norm) as f32).collect()
            })
            .collect())
    }
}
