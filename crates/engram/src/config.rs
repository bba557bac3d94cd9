//! Configuration: built-in defaults → `engram.toml` → `ENGRAM__SECTION__KEY` environment
//! variables → command-line flags, each layer overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub readers: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("./engram-data"),
            readers: 4,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, human-readable when it is.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `engram=debug,tower_http=info`. `RUST_LOG`
    /// overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// The commented example printed by `engram config default`.
pub const DEFAULT_TOML: &str = r#"# engram configuration. Every key is optional; these are the defaults.
# Precedence: built-in defaults < this file < ENGRAM__SECTION__KEY environment
# variables (e.g. ENGRAM__STORE__DATA_DIR=/var/lib/engram) < command-line flags.
# engram reads ./engram.toml, or the file given with --config or ENGRAM_CONFIG.

[server]
# Address to listen on. Use 0.0.0.0:8080 to listen on every interface.
addr = "127.0.0.1:8080"
# Largest request body accepted, in bytes; larger requests get 413.
body_limit_bytes = 1048576
# Requests taking longer than this are answered 503.
request_timeout_secs = 30

[store]
# Where the embedded store keeps its files (SQLite database, later indexes and models).
data_dir = "./engram-data"
# Read connections to the database; reads run in parallel with each other and the writer.
readers = 4

[log]
# A tracing filter: error, warn, info, debug, trace, or per-target like "engram=debug".
# RUST_LOG, when set, overrides it.
level = "info"
# auto (JSON unless stderr is a terminal), json, or pretty.
format = "auto"
"#;

/// Loads the configuration layers, up to the environment. Flags are applied by the caller.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ENGRAM_CONFIG").map(PathBuf::from));
    match path {
        Some(p) => {
            anyhow::ensure!(p.exists(), "config file {} does not exist", p.display());
            fig = fig.merge(Toml::file_exact(p));
        }
        None if Path::new("engram.toml").exists() => {
            fig = fig.merge(Toml::file_exact("engram.toml"))
        }
        None => {}
    }
    fig = fig.merge(Env::prefixed("ENGRAM__").split("__"));
    fig.extract().context("invalid configuration")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature is fixed
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "engram.toml",
                "[store]\ndata_dir = \"/from/file\"\n[server]\naddr = \"127.0.0.1:9000\"\n",
            )?;
            jail.set_env("ENGRAM__STORE__DATA_DIR", "/from/env");
            let c = load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.store.data_dir, PathBuf::from("/from/env"));
            assert_eq!(c.server.addr, "127.0.0.1:9000".parse().unwrap());
            assert_eq!(c.log, LogConfig::default());
            Ok(())
        });
    }

    #[test]
    fn a_typo_in_a_section_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("engram.toml", "[store]\ndata_dri = \"x\"\n")?;
            assert!(load(None).is_err());
            Ok(())
        });
    }
}
