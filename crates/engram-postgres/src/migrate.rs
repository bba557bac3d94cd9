//! Versioned migrations, embedded in the binary. An applied migration is never edited: its
//! checksum is recorded and checked at every start; changes go in a new file. Replicas
//! starting together take turns through an advisory lock.
//!
//! Migrations 5 and 6 were edited once after a release had shipped them (a mistake). Their
//! first texts are kept in `migrations/superseded/` and still accepted, and migration 7
//! brings a database that took either text to the same shape.

use sha2::{Digest, Sha256};

use crate::{db_err, locks, StoreError};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
    /// Earlier texts of this migration that a released engram applied; a database that
    /// recorded one of them is not refused (a later migration reconciles the difference).
    pub superseded: &'static [&'static str],
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
        superseded: &[],
    },
    Migration {
        version: 2,
        name: "records",
        sql: include_str!("../migrations/0002_records.sql"),
        superseded: &[],
    },
    Migration {
        version: 3,
        name: "records_assigned",
        sql: include_str!("../migrations/0003_records_assigned.sql"),
        superseded: &[],
    },
    Migration {
        version: 4,
        name: "context_session",
        sql: include_str!("../migrations/0004_context_session.sql"),
        superseded: &[],
    },
    Migration {
        version: 5,
        name: "vector_scope",
        sql: include_str!("../migrations/0005_vector_scope.sql"),
        superseded: &[include_str!(
            "../migrations/superseded/0005_vector_scope.1.sql"
        )],
    },
    Migration {
        version: 6,
        name: "vector_scope_index",
        sql: include_str!("../migrations/0006_vector_scope_index.sql"),
        superseded: &[include_str!(
            "../migrations/superseded/0006_vector_scope_index.1.sql"
        )],
    },
    Migration {
        version: 7,
        name: "vector_follow",
        sql: include_str!("../migrations/0007_vector_follow.sql"),
        superseded: &[],
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
pub(crate) async fn migrate(
    client: &mut deadpool_postgres::Object,
    lock_base: i64,
) -> Result<MigrationReport, StoreError> {
    let lock = lock_base.wrapping_add(locks::MIGRATE);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&lock])
        .await
        .map_err(db_err)?;
    let out = apply(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock])
        .await
        .map_err(db_err);
    let out = out?;
    unlock?;
    Ok(out)
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<MigrationReport, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    bigint PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db_err)?;
    let newest_known = MIGRATIONS.last().map(|m| m.version).unwrap_or(0);
    let newest_applied: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0);
    if newest_applied > newest_known {
        return Err(StoreError::Invalid(format!(
            "the database is at schema version {newest_applied}, newer than this engram knows ({newest_known}); upgrade engram"
        )));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let recorded = client
            .query_opt(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await
            .map_err(db_err)?;
        if let Some(row) = recorded {
            let sum: String = row.get(0);
            if sum != checksum(m.sql) && !m.superseded.iter().any(|old| sum == checksum(old)) {
                return Err(StoreError::Invalid(format!(
                    "migration {} ({}) changed after it was applied; restore the original file",
                    m.version, m.name
                )));
            }
            continue;
        }
        let tx = client.transaction().await.map_err(db_err)?;
        tx.batch_execute(m.sql).await.map_err(|e| {
            let hint = if e.to_string().contains("vector") {
                " (engram needs the pgvector extension: install pgvector >= 0.7 on the server, \
                 or run `CREATE EXTENSION vector` as a superuser)"
            } else {
                ""
            };
            StoreError::Unavailable(format!(
                "migration {} ({}) failed: {}{hint}",
                m.version,
                m.name,
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string())
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        applied.push((m.version, m.name));
    }
    Ok(MigrationReport {
        applied,
        current: newest_known,
    })
}
