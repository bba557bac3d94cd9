//! The real model, obtained the way engram obtains it: `ENGRAM__EMBEDDING__MODEL_DIR`, the
//! Hugging Face cache, engram's cache, else a download into engram's cache.
#![allow(dead_code)] // each test binary uses a part of this

use std::sync::OnceLock;

use engram_embed::{LocalConfig, LocalEmbedder};

/// Loaded once per test binary. Panics (so the test fails, in CI or not) with the reason and
/// the fix when the model cannot be obtained: these tests never skip.
pub fn local() -> LocalEmbedder {
    static MODEL: OnceLock<LocalEmbedder> = OnceLock::new();
    MODEL
        .get_or_init(|| match LocalEmbedder::load(&LocalConfig::default()) {
            Ok(e) => e,
            Err(e) => panic!(
                "the real all-MiniLM-L6-v2 model is needed by this test and could not be obtained{}: {e}",
                if std::env::var_os("CI").is_some() { " (CI is set: this is a failure, not a skip)" } else { "" }
            ),
        })
        .clone()
}

/// The directory of the real model files, found (or fetched) by the usual discovery.
pub fn model_dir() -> std::path::PathBuf {
    match engram_embed::ModelLocator::from_config(&LocalConfig::default()).locate() {
        Ok(found) => found.dir,
        Err(e) => {
            panic!("the real model files are needed by this test and could not be obtained: {e}")
        }
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}
