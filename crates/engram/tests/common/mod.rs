//! Helpers for tests that run the `engram` binary as a child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_engram");

pub fn create_key(data_dir: &Path) -> String {
    let out = Command::new(BIN)
        .args([
            "keys",
            "create",
            "--tenant",
            "durable",
            "--json",
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("ENGRAM_CONFIG")
        .output()
        .expect("run engram keys create");
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("keys create --json prints JSON");
    assert_eq!(v["tenant"], "durable");
    v["key"].as_str().unwrap().to_owned()
}

/// A running `engram serve`; killed (SIGKILL) and reaped when dropped, so a failing test
/// never leaves a server behind.
pub struct Server(Child);

impl Server {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.0.try_wait().expect("wait for engram serve") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "engram serve did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `engram serve` on a free port and returns it with its base URL.
pub fn serve(data_dir: &Path) -> (Server, String) {
    serve_with(data_dir, &[], &[])
}

/// Starts `engram serve` with extra environment variables set and others removed.
pub fn serve_with(data_dir: &Path, env: &[(&str, &str)], env_remove: &[&str]) -> (Server, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("ENGRAM__LOG__LEVEL", "warn")
        .env_remove("ENGRAM_CONFIG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for k in env_remove {
        cmd.env_remove(k);
    }
    let child = cmd.spawn().expect("spawn engram serve");
    let mut server = Server(child);
    let stdout = server.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "engram serve did not start");
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(url) = line.strip_prefix("engram listening on ") {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (server, url.trim().to_owned());
        }
    }
}

/// `GET url` with the bearer key; the JSON body.
pub async fn get_json(http: &reqwest::Client, url: &str, key: &str) -> Value {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST url` with the bearer key and a JSON body; the JSON answer.
pub async fn post_json(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> Value {
    http.post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The Postgres (with pgvector) tests use: `ENGRAM_TEST_POSTGRES_URL`, default the cluster
/// `scripts/pgvector` starts (`scripts/test` starts it).
pub fn postgres_url() -> String {
    std::env::var("ENGRAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

/// The Redis tests use: `ENGRAM_TEST_REDIS_URL`, default the local one.
pub fn redis_url() -> String {
    std::env::var("ENGRAM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Runs `engram ARGS` with extra environment; its stdout, or a panic with its stderr.
pub fn engram_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("ENGRAM_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("run engram");
    assert!(
        out.status.success(),
        "engram {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
