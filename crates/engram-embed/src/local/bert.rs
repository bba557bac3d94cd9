//! A BERT encoder for sentence embeddings, on candle tensors.
//!
//! Same arithmetic as `transformers`' `BertModel` followed by sentence-transformers'
//! mean pooling, arranged for CPU inference of variable-length batches:
//! - sequences are *packed* (no padding) for everything but attention: embeddings, the
//!   projections, the feed-forward block and the layer norms work on `[total_tokens, hidden]`;
//! - attention alone is padded, per batch, to the batch's longest sequence, with padded keys
//!   masked out;
//! - Q, K and V are one matrix product; the 1/sqrt(head_dim) scale is folded into Q's
//!   weights at load time; weights are stored transposed so products are plain `x · W`;
//! - bias, GELU, residual and layer norm are fused kernels (see `ops`).

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::ops::{self, BiasGelu, BiasResidualLayerNorm, MaskedSoftmax, MergeHeads, Packing, SplitHeads};

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
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

struct Layer {
    w_qkv: Tensor, // [hidden, 3 * hidden], Q columns pre-scaled
    b_qkv: Vec<f32>,
    w_out: Tensor, // [hidden, hidden]
    b_out: Vec<f32>,
    ln1_gamma: Vec<f32>,
    ln1_beta: Vec<f32>,
    w_up: Tensor, // [hidden, intermediate]
    b_up: Vec<f32>,
    w_down: Tensor, // [intermediate, hidden]
    b_down: Vec<f32>,
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
    Io { path: String, source: std::io::Error },
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
        let raw = std::fs::read_to_string(&cfg_path).map_err(|source| LoadError::Io { path: cfg_path.display().to_string(), source })?;
        let cfg: BertConfig = serde_json::from_str(&raw).map_err(|e| LoadError::Config(e.to_string()))?;
        if cfg.hidden_act != "gelu" {
            return Err(LoadError::Config(format!("hidden_act {:?} is not supported (only \"gelu\")", cfg.hidden_act)));
        }
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(LoadError::Config("hidden_size must be a multiple of num_attention_heads".into()));
        }
        let weights_path = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only for the duration of this function and
        // every tensor is copied out of it; nothing else in engram writes model files in place
        // (downloads go to a temporary directory and are renamed into place).
        let st = unsafe { MmapedSafetensors::new(&weights_path)? };
        let prefix = if st.get("embeddings.word_embeddings.weight").is_ok() { "" } else { "bert." };
        let dev = Device::Cpu;
        let get = |name: &str| -> candle_core::Result<Tensor> { st.load(&format!("{prefix}{name}"), &dev)?.to_dtype(DType::F32) };
        // Old checkpoints call layer-norm parameters gamma/beta.
        let get_ln = |base: &str| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let gamma = get(&format!("{base}.weight")).or_else(|_| get(&format!("{base}.gamma")))?;
            let beta = get(&format!("{base}.bias")).or_else(|_| get(&format!("{base}.beta")))?;
            Ok((vec1(gamma)?, vec1(beta)?))
        };
        // Linear weights are stored [out, in]; keep them as contiguous [in, out].
        let transposed = |t: Tensor| -> candle_core::Result<Tensor> { t.t()?.contiguous() };

        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_attention_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let word = vec1(get("embeddings.word_embeddings.weight")?)?;
        let position = vec1(get("embeddings.position_embeddings.weight")?)?;
        let token_type = vec1(get("embeddings.token_type_embeddings.weight")?)?;
        if word.len() != cfg.vocab_size * h || position.len() != cfg.max_position_embeddings * h || token_type.len() < h {
            return Err(LoadError::Config("embedding shapes do not match config.json".into()));
        }
        let (emb_gamma, emb_beta) = get_ln("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q = (get(&format!("{p}.attention.self.query.weight"))? * scale)?;
            let k = get(&format!("{p}.attention.self.key.weight"))?;
            let v = get(&format!("{p}.attention.self.value.weight"))?;
            let w_qkv = transposed(Tensor::cat(&[q, k, v], 0)?)?;
            let bq = (get(&format!("{p}.attention.self.query.bias"))? * scale)?;
            let bk = get(&format!("{p}.attention.self.key.bias"))?;
            let bv = get(&format!("{p}.attention.self.value.bias"))?;
            let b_qkv = vec1(Tensor::cat(&[bq, bk, bv], 0)?)?;
            let (ln1_gamma, ln1_beta) = get_ln(&format!("{p}.attention.output.LayerNorm"))?;
            let (ln2_gamma, ln2_beta) = get_ln(&format!("{p}.output.LayerNorm"))?;
            layers.push(Layer {
                w_qkv,
                b_qkv,
                w_out: transposed(get(&format!("{p}.attention.output.dense.weight"))?)?,
                b_out: vec1(get(&format!("{p}.attention.output.dense.bias"))?)?,
                ln1_gamma,
                ln1_beta,
                w_up: transposed(get(&format!("{p}.intermediate.dense.weight"))?)?,
                b_up: vec1(get(&format!("{p}.intermediate.dense.bias"))?)?,
                w_down: transposed(get(&format!("{p}.output.dense.weight"))?)?,
                b_down: vec1(get(&format!("{p}.output.dense.bias"))?)?,
                ln2_gamma,
                ln2_beta,
            });
        }
        let check = |t: &Tensor, dims: &[usize], what: &str| {
            if t.dims() == dims {
                Ok(())
            } else {
                Err(LoadError::Config(format!("{what} has shape {:?}, config.json implies {dims:?}", t.dims())))
            }
        };
        for l in &layers {
            check(&l.w_qkv, &[h, 3 * h], "attention Q/K/V")?;
            check(&l.w_out, &[h, h], "attention output")?;
            check(&l.w_up, &[h, cfg.intermediate_size], "intermediate dense")?;
            check(&l.w_down, &[cfg.intermediate_size, h], "output dense")?;
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
    /// state averaged over each sequence's tokens, then L2-normalised.
    pub fn embed(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.cfg.hidden_size;
        let packing = Packing::new(seqs.iter().map(|s| s.len()).collect());
        if packing.max_len > self.cfg.max_position_embeddings {
            candle_core::bail!("sequence of {} tokens exceeds {} positions", packing.max_len, self.cfg.max_position_embeddings);
        }
        if seqs.iter().any(|s| s.is_empty()) {
            candle_core::bail!("empty token sequence");
        }

        // Embeddings: word + position + token type 0, then layer norm.
        let mut x = vec![0f32; packing.total * h];
        for (s, ids) in seqs.iter().enumerate() {
            for (t, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= self.cfg.vocab_size {
                    candle_core::bail!("token id {id} outside the vocabulary");
                }
                let row = &mut x[(packing.offsets[s] + t) * h..][..h];
                let w = &self.word[id * h..][..h];
                let p = &self.position[t * h..][..h];
                for i in 0..h {
                    row[i] = w[i] + p[i] + self.token_type0[i];
                }
            }
        }
        ops::layer_norm_in_place(&mut x, &self.emb_gamma, &self.emb_beta, self.eps);
        let mut x = Tensor::from_vec(x, (packing.total, h), &Device::Cpu)?;

        let heads = self.cfg.num_attention_heads;
        let bh = packing.batch() * heads;
        for layer in &self.layers {
            let qkv = x.matmul(&layer.w_qkv)?;
            let split = qkv.apply_op1_no_bwd(&SplitHeads { packing: &packing, heads, head_dim: self.head_dim, bias: &layer.b_qkv })?;
            drop(qkv);
            let q = split.narrow(0, 0, bh)?;
            let k = split.narrow(0, bh, bh)?;
            let v = split.narrow(0, 2 * bh, bh)?;
            let scores = q.matmul(&k.t()?)?;
            let probs = scores.apply_op1_no_bwd(&MaskedSoftmax { packing: &packing, heads })?;
            drop(scores);
            let context = probs.matmul(&v)?;
            drop(probs);
            drop(split);
            let context = context.apply_op1_no_bwd(&MergeHeads { packing: &packing, heads, head_dim: self.head_dim })?;
            let attn = context.matmul(&layer.w_out)?;
            x = attn.apply_op2_no_bwd(
                &x,
                &BiasResidualLayerNorm { bias: &layer.b_out, gamma: &layer.ln1_gamma, beta: &layer.ln1_beta, eps: self.eps },
            )?;
            let up = x.matmul(&layer.w_up)?.apply_op1_no_bwd(&BiasGelu { bias: &layer.b_up })?;
            let down = up.matmul(&layer.w_down)?;
            drop(up);
            x = down.apply_op2_no_bwd(
                &x,
                &BiasResidualLayerNorm { bias: &layer.b_down, gamma: &layer.ln2_gamma, beta: &layer.ln2_beta, eps: self.eps },
            )?;
        }

        // Mean pooling over each sequence's tokens (all of them are real: nothing is padded
        // here), then L2 normalisation, as sentence-transformers does.
        let hidden = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(packing.batch());
        for s in 0..packing.batch() {
            let mut acc = vec![0f64; h];
            for t in 0..packing.lens[s] {
                let row = &hidden[(packing.offsets[s] + t) * h..][..h];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            let n = packing.lens[s] as f64;
            let mean: Vec<f64> = acc.iter().map(|a| a / n).collect();
            let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            out.push(mean.iter().map(|v| (v / norm) as f32).collect());
        }
        Ok(out)
    }
}
