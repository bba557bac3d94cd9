//! Versioned migrations, embedded in the binary. An applied migration is never edited: its
//! checksum is recorded and checked at every start; changes go in a new file.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::StoreError;

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "memories",
        sql: include_str!("../migrations/0001_memories.sql"),
    },
    Migration {
        version: 2,
        name: "embeddings",
        sql: include_str!("../migrations/0002_embeddings.sql"),
    },
    Migration {
        version: 3,
        name: "search",
        sql: include_str!("../migrations/0003_search.sql"),
    },
    Migration {
        version: 4,
        name: "context",
        sql: include_str!("../migrations/0004_context.sql"),
    },
    Migration {
        version: 5,
        name: "records",
        sql: include_str!("../migrations/0005_records.sql"),
    },
    Migration {
        version: 6,
        name: "keyword_index",
        sql: include_str!("../migrations/0006_keyword_index.sql"),
    },
    Migration {
        version: 7,
        name: "records_assigned",
        sql: include_str!("../migrations/0007_records_assigned.sql"),
    },
    Migration {
        version: 8,
        name: "context_session",
        sql: include_str!("../migrations/0008_context_session.sql"),
    },
];

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<(i64, &'static str)>,
    pub current: i64,
}

/// Applies every pending migration, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<MigrationReport, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at INTEGER NOT NULL)",
    )
    .map_err(crate::db_err)?;
    let newest_known = MIGRATIONS.last().map(|m| m.version).unwrap_or(0);
    let newest_applied: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(crate::db_err)?;
    if newest_applied > newest_known {
        return Err(StoreError::Invalid(format!(
            "the data directory is at schema version {newest_applied}, newer than this engram knows ({newest_known}); upgrade engram"
        )));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let recorded: Option<String> = conn
            .query_row(
                "SELECT checksum FROM schema_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()
            .map_err(crate::db_err)?;
        match recorded {
            Some(sum) if sum == checksum(m.sql) => continue,
            Some(_) => {
                return Err(StoreError::Invalid(format!(
                    "migration {} ({}) differs from the one applied to this database",
                    m.version, m.name
                )))
            }
            None => {}
        }
        let tx = conn.transaction().map_err(crate::db_err)?;
        tx.execute_batch(m.sql).map_err(crate::db_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            params![m.version, m.name, checksum(m.sql), engram_core::time::to_micros(engram_core::time::now())],
        )
        .map_err(crate::db_err)?;
        tx.commit().map_err(crate::db_err)?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        applied.push((m.version, m.name));
    }
    Ok(MigrationReport {
        applied,
        current: newest_known,
    })
}
