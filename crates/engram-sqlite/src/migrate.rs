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
    Migration {
        version: 9,
        name: "vector_rows",
        sql: include_str!("../migrations/0009_vector_rows.sql"),
    },
    Migration {
        version: 10,
        name: "insert_without_trigger",
        sql: include_str!("../migrations/0010_insert_without_trigger.sql"),
    },
    Migration {
        version: 11,
        name: "covering_filters",
        sql: include_str!("../migrations/0011_covering_filters.sql"),
    },
    Migration {
        version: 12,
        name: "held_list_filters",
        sql: include_str!("../migrations/0012_held_list_filters.sql"),
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
    apply(conn, MIGRATIONS)
}

/// Applies the pending ones of `migrations` (a prefix of [`MIGRATIONS`]).
fn apply(
    conn: &mut Connection,
    migrations: &'static [Migration],
) -> Result<MigrationReport, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at INTEGER NOT NULL)",
    )
    .map_err(crate::db_err)?;
    let newest_known = migrations.last().map(|m| m.version).unwrap_or(0);
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
    for m in migrations {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// No trigger fires on inserting a memory: any would make every insert keep a
    /// statement journal (migration 10; the store queues sessions itself).
    #[test]
    fn inserting_a_memory_fires_no_trigger() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn, MIGRATIONS).unwrap();
        let on_insert = count(
            &conn,
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'memories'
             AND upper(sql) LIKE '%INSERT ON MEMORIES%'",
        );
        assert_eq!(on_insert, 0);
        // The update and delete triggers stay.
        assert!(count(&conn, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'memories'") >= 4);
    }

    /// A filter's candidates and counts come from its index alone, without a read of each
    /// row to check `deleted_at` (migration 11), for the filters SQLite still indexes
    /// (migration 12 left the others to the keyword index's held fields).
    #[test]
    fn filter_candidates_are_listed_from_covering_indexes() {
        use engram_core::{EmbeddingStatus, MemoryFilter};
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn, MIGRATIONS).unwrap();
        let one = |f: fn(&mut MemoryFilter)| {
            let mut filter = MemoryFilter::default();
            f(&mut filter);
            filter
        };
        let filters = [
            MemoryFilter::default(),
            one(|f| f.session_id = Some("s".into())),
            one(|f| f.embedding_status = Some(EmbeddingStatus::Pending)),
            one(|f| f.created_after = Some(engram_core::time::now())),
        ];
        for filter in filters {
            let (cond, args) = crate::filter_sql("t", &filter);
            for select in ["m.rid", "count(*)"] {
                let sql =
                    format!("EXPLAIN QUERY PLAN SELECT {select} FROM memories m WHERE {cond}");
                let plan: Vec<String> = conn
                    .prepare(&sql)
                    .unwrap()
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert!(
                    plan.iter().any(|p| p.contains("COVERING INDEX")),
                    "{filter:?}: {plan:?}"
                );
            }
        }
    }

    /// Migration 9 turns the vector tables into rowid tables: every row survives, the keys
    /// stay unique, and the triggers that feed `ann_log` and follow deletions still fire.
    #[test]
    fn vector_tables_keep_their_rows_keys_and_triggers() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn, &MIGRATIONS[..8]).unwrap();
        conn.execute_batch(
            "INSERT INTO memories (rid, id, tenant, session_id, content, memory_type, source,
                 content_hash, embedding_status, created_at, updated_at, accessed_at, version)
             VALUES (1, x'01', 't', 's', 'one', 'note', 'manual', 'h1', 'completed', 1, 1, 1, 1),
                    (2, x'02', 't', 's', 'two', 'note', 'manual', 'h2', 'completed', 1, 1, 1, 1);
             INSERT INTO memory_vectors VALUES (1, 'm', 0, 'h1', x'0000803f'),
                 (1, 'm', 1, 'h1', x'00000040'), (2, 'm', 0, 'h2', x'00004040');
             INSERT INTO embedding_cache VALUES ('m', 'h1', 2, x'0000803f00000040', 5);
             INSERT INTO context_vectors VALUES (1, 'm', 'c1', x'0000803f'),
                 (2, 'm', 'c2', x'00004040');
             DELETE FROM ann_log;",
        )
        .unwrap();
        let report = apply(&mut conn, &MIGRATIONS[..9]).unwrap();
        assert_eq!(report.applied, vec![(9, "vector_rows")]);

        for table in ["memory_vectors", "embedding_cache", "context_vectors"] {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(!sql.contains("WITHOUT ROWID"), "{table}: {sql}");
        }
        let vector: Vec<u8> = conn
            .query_row(
                "SELECT vector FROM memory_vectors WHERE rid = 1 AND model_key = 'm' AND window = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(vector, [0, 0, 0, 0x40]);
        assert_eq!(count(&conn, "SELECT count(*) FROM memory_vectors"), 3);
        assert_eq!(count(&conn, "SELECT windows FROM embedding_cache"), 2);
        assert_eq!(count(&conn, "SELECT count(*) FROM context_vectors"), 2);
        // Copying the rows fed nothing to the vector index's log.
        assert_eq!(count(&conn, "SELECT count(*) FROM ann_log"), 0);

        // Keys stay unique, and the statements that rely on them still work.
        assert!(conn
            .execute(
                "INSERT INTO memory_vectors VALUES (2, 'm', 0, 'h2', x'00')",
                []
            )
            .is_err());
        conn.execute(
            "INSERT OR IGNORE INTO embedding_cache VALUES ('m', 'h1', 1, x'00', 6)",
            [],
        )
        .unwrap();
        assert_eq!(count(&conn, "SELECT windows FROM embedding_cache"), 2);
        conn.execute(
            "INSERT INTO context_vectors (rid, model_key, context_hash, vector)
             SELECT 2, 'm', 'c3', x'00' FROM memories WHERE rid = 2
             ON CONFLICT (rid, model_key) DO UPDATE SET context_hash = excluded.context_hash",
            [],
        )
        .unwrap();
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM context_vectors WHERE context_hash = 'c3'"
            ),
            1
        );

        // Triggers: the index's log hears of vector and context changes, and a purged
        // memory's context vector goes with it.
        conn.execute("DELETE FROM memory_vectors WHERE rid = 2", [])
            .unwrap();
        conn.execute(
            "INSERT INTO memory_vectors VALUES (2, 'm', 0, 'h2', x'00004040')",
            [],
        )
        .unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM ann_log WHERE rid = 2"),
            3
        );
        conn.execute("DELETE FROM memories WHERE rid = 1", [])
            .unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM context_vectors WHERE rid = 1"),
            0
        );
        assert!(count(&conn, "SELECT count(*) FROM ann_log WHERE rid = 1") >= 1);
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }
}
