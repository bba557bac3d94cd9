//! The `engram` binary: the CLI, configuration, logging, and the only place where storage
//! backends are chosen and wired into the core and the server.

mod backends;
mod bench;
mod cli;
mod config;
mod embedding;
mod logging;
mod output;
mod serve;
mod target;
mod tiers;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: request handling, JSON and the indexes
/// allocate small objects across threads all the time, where glibc's malloc spent a tenth
/// of the CPU of a bulk-insert run in malloc, free and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
