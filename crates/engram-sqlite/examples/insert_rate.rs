//! Store-only insert throughput: memories/s through the `MemoryStore` port, without HTTP.
//! `cargo run --release -p engram-sqlite --example insert_rate -- [memories] [concurrent] [batch]`

use std::sync::Arc;
use std::time::Instant;

use engram_core::validate::{Label, Metadata, Tags};
use engram_core::{InsertMemory, MemoryStore, MemoryType, NewMemory, TenantId};
use engram_sqlite::{SqliteConfig, SqliteStore};

fn memory(tenant: &TenantId, i: usize) -> InsertMemory {
    let mut n = NewMemory::note(&format!(
        "Memory {i}: the agent deployed release {i} to the cluster after the review of the migration plan and the budget report for the customer"
    ))
    .unwrap();
    n.memory_type = [MemoryType::Note, MemoryType::Task, MemoryType::Fact][i % 3];
    n.user_id = Some(Label::parse(format!("user-{}", i % 100), "user_id").unwrap());
    n.project = Some(Label::parse(format!("project-{}", i % 7), "project").unwrap());
    n.tags = Tags::parse(&["bench", ["a", "b", "c"][i % 3]], "tags").unwrap();
    n.metadata = Metadata::parse(serde_json::json!({ "seq": i }), "metadata").unwrap();
    InsertMemory {
        memory: n.into_memory(tenant.clone(), engram_core::time::now()),
        idempotency: None,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let total = args.first().copied().unwrap_or(100_000);
    let clients = args.get(1).copied().unwrap_or(8);
    let batch = args.get(2).copied().unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&SqliteConfig::new(dir.path())).unwrap());
    let tenant = TenantId::parse("bench").unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (store, tenant, next) = (store.clone(), tenant.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                    if start >= total {
                        break;
                    }
                    let items: Vec<_> = (start..(start + batch).min(total))
                        .map(|i| memory(&tenant, i))
                        .collect();
                    for r in store.insert(&tenant, items).await.unwrap() {
                        r.unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    store.close();
    let size = std::fs::metadata(dir.path().join("engram.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{total} memories, {clients} writers, batches of {batch}: {:.0} memories/s ({secs:.2} s), db {} MB",
        total as f64 / secs,
        size / 1_000_000
    );
}
