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

/// SQLite and the vector engine (C and C++) allocate through the C library's `malloc`,
/// not the allocator above. glibc gives threads that allocate at once arenas of their
/// own, up to eight per core, and memory freed into one arena is not reused by another:
/// SQLite's page caches, filled on whichever blocking thread runs a query, spread over
/// them, and at a million memories the arenas held about twice the pages the caches are
/// bounded to (`docs/benchmarks.md`). Two arenas for the process keep freed pages
/// reusable; SQLite allocates little once its caches are full, so they are not contended.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only tunes the allocator; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the C library heap's free pages to the operating system. Opening the embedded
/// store builds the vector index from every vector, read through SQLite's page cache, and
/// frees that cache afterwards (`PRAGMA shrink_memory`); glibc keeps the freed pages
/// resident, where neither the Rust allocator (which builds the keyword index next) nor
/// SQLite's capped caches will use them again. At a million memories this lowered the
/// searching process's peak RSS from 1,384–1,479 to 1,210–1,343 MiB (docs/benchmarks.md).
pub(crate) fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only hands free pages of the C allocator back to the system,
    // under the allocator's own locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
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
