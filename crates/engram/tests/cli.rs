//! The memory commands of the CLI, in both modes: on the local data directory and against
//! a running server (`--server URL --key KEY`). Both speak the same DTOs and answer alike.

mod common;

use std::path::Path;
use std::process::Command;

use common::{create_key, serve_with};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_engram");

/// Runs `engram <args> --json` with the target flags; returns the parsed output, or the
/// stderr text on failure.
fn engram(target: &[String], args: &[&str]) -> Result<Value, String> {
    let out = Command::new(BIN)
        .args(args)
        .args(target)
        .arg("--json")
        .env_remove("ENGRAM_CONFIG")
        .env_remove("ENGRAM_SERVER")
        .env_remove("ENGRAM_KEY")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn story(target: &[String]) {
    let a = engram(
        target,
        &[
            "add",
            "Prefers short answers",
            "--type",
            "fact",
            "--tag",
            "style",
            "--user-id",
            "u42",
        ],
    )
    .unwrap();
    assert_eq!(a["memory_type"], "fact");
    assert_eq!(a["tags"], serde_json::json!(["style"]));
    assert_eq!(a["embedding_status"], "pending");
    let id = a["id"].as_str().unwrap().to_owned();
    engram(target, &["add", "Another user's note", "--user-id", "u7"]).unwrap();

    let got = engram(target, &["get", &id]).unwrap();
    assert_eq!(got["content"], "Prefers short answers");

    let list = engram(target, &["list", "--user-id", "u42"]).unwrap();
    assert_eq!(list["meta"]["total"], 1);
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(engram(target, &["list"]).unwrap()["meta"]["total"], 2);

    // Keyword search finds the write at once, with filters, in both modes.
    let s = engram(target, &["search", "short answers", "--mode", "keyword"]).unwrap();
    assert_eq!(s["hits"][0]["memory"]["id"], id.as_str());
    assert_eq!(s["hits"].as_array().unwrap().len(), 1);
    let s = engram(
        target,
        &["search", "note", "--mode", "keyword", "--user-id", "u42"],
    )
    .unwrap();
    assert!(s["hits"].as_array().unwrap().is_empty());
    // Context assembly cites the memory, within the budget, in both modes.
    let c = engram(
        target,
        &[
            "context",
            "short answers",
            "--max-tokens",
            "200",
            "--user-id",
            "u42",
        ],
    )
    .unwrap();
    assert!(c["total_tokens"].as_u64().unwrap() <= 200, "{c}");
    let cited = format!("memory:{id}");
    assert!(c["rendered"].as_str().unwrap().contains(&cited), "{c}");
    let err = engram(target, &["context", "x", "--max-tokens", "0"]).unwrap_err();
    assert!(err.contains("max_tokens"), "{err}");
    let err = engram(target, &["context", "x", "--tier", "dreams"]).unwrap_err();
    assert!(err.contains("tiers[0]"), "{err}");

    let err = engram(target, &["search", "x", "-k", "0"]).unwrap_err();
    assert!(err.contains("`k`") || err.contains("field `k`"), "{err}");

    let up = engram(
        target,
        &[
            "update",
            &id,
            "--content",
            "Prefers very short answers",
            "--clear-tags",
        ],
    )
    .unwrap();
    assert_eq!(up["version"], 2);
    assert_eq!(up["tags"], serde_json::json!([]));
    assert_eq!(up["user_id"], "u42", "untouched fields stay");

    // Bad input is refused with the field named, in both modes.
    let err = engram(target, &["add", "x", "--type", "poem"]).unwrap_err();
    assert!(
        err.contains("memory_type") && err.contains("validation_failed"),
        "{err}"
    );
    let err = engram(target, &["get", "not-a-uuid"]).unwrap_err();
    assert!(err.contains("`id`"), "{err}");

    assert_eq!(
        engram(target, &["delete", &id]).unwrap()["deleted"],
        id.as_str()
    );
    let err = engram(target, &["get", &id]).unwrap_err();
    assert!(err.contains("not_found"), "{err}");
    assert_eq!(engram(target, &["list"]).unwrap()["meta"]["total"], 1);
}

fn local(dir: &Path) -> Vec<String> {
    vec!["--data-dir".into(), dir.display().to_string()]
}

#[test]
fn memory_commands_work_on_the_local_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    story(&local(dir.path()));
    // The tier migration runs over the same directory; twice is harmless.
    for _ in 0..2 {
        let m = engram(&local(dir.path()), &["migrate-tiers", "--older-than", "0s"]).unwrap();
        assert_eq!(m["moved"], 0, "{m}");
    }
    let err = engram(&local(dir.path()), &["migrate-tiers", "--older-than", "3w"]).unwrap_err();
    assert!(err.contains("unit"), "{err}");
}

#[test]
fn memory_commands_work_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path());
    let (mut server, base) = serve_with(dir.path(), &[("ENGRAM__PIPELINE__ENABLED", "false")], &[]);
    story(&["--server".into(), base.clone(), "--key".into(), key]);
    // A wrong key is refused.
    let err = engram(
        &["--server".into(), base, "--key".into(), "egk_nope".into()],
        &["list"],
    )
    .unwrap_err();
    assert!(err.contains("unauthorized"), "{err}");
    server.kill();
}
