//! Mapping between memories and rows.

use engram_core::time::{from_micros, to_micros};
use engram_core::{EmbeddingStatus, Memory, MemoryId, MemoryType, Scope, Source, TenantId};
use std::sync::LazyLock;

use rusqlite::{Connection, Row};

use crate::{db_err, StoreError};

/// The columns `row_to_memory` reads, in order.
pub(crate) const COLUMNS: &str = "m.id, m.tenant, m.user_id, m.agent_id, m.project, m.domain, m.session_id, \
    m.content, m.memory_type, m.source, m.source_ref, m.title, m.tags, m.metadata, m.content_hash, \
    m.embedding_status, m.embedding_model, m.embedding_updated_at, m.embedding_error, m.created_at, \
    m.updated_at, m.accessed_at, m.deleted_at, m.valid_from, m.valid_to, m.version, m.related_ids, \
    m.conversation_id";

/// The position of `m.rid` in a statement selecting `{COLUMNS}, m.rid`.
pub(crate) const ROWID_COLUMN: usize = 28;

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("corrupt column {what}").into())
}

pub(crate) fn row_to_memory(r: &Row<'_>) -> rusqlite::Result<Memory> {
    let id: Vec<u8> = r.get(0)?;
    let tenant: String = r.get(1)?;
    let memory_type: String = r.get(8)?;
    let source: String = r.get(9)?;
    let tags: String = r.get(12)?;
    let metadata: String = r.get(13)?;
    let status: String = r.get(15)?;
    let related: String = r.get(26)?;
    let ts = |i: usize| -> rusqlite::Result<Option<engram_core::Timestamp>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(from_micros))
    };
    Ok(Memory {
        id: MemoryId::from_bytes(&id).ok_or_else(|| corrupt("id"))?,
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        scope: Scope {
            user_id: r.get(2)?,
            agent_id: r.get(3)?,
            project: r.get(4)?,
            domain: r.get(5)?,
            session_id: r.get(6)?,
        },
        content: r.get(7)?,
        memory_type: MemoryType::parse(&memory_type, "memory_type")
            .map_err(|_| corrupt("memory_type"))?,
        source: Source::parse(&source, "source").map_err(|_| corrupt("source"))?,
        source_ref: r.get(10)?,
        title: r.get(11)?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?,
        metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata"))?,
        content_hash: r.get(14)?,
        embedding_status: EmbeddingStatus::parse(&status, "embedding_status")
            .map_err(|_| corrupt("embedding_status"))?,
        embedding_model: r.get(16)?,
        embedding_updated_at: ts(17)?,
        embedding_error: r.get(18)?,
        created_at: from_micros(r.get(19)?),
        updated_at: from_micros(r.get(20)?),
        accessed_at: from_micros(r.get(21)?),
        deleted_at: ts(22)?,
        valid_from: ts(23)?,
        valid_to: ts(24)?,
        version: r.get(25)?,
        related_ids: serde_json::from_str(&related).map_err(|_| corrupt("related_ids"))?,
        conversation_id: r.get(27)?,
    })
}

fn json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    json_sized(v, 128)
}

/// `v` as JSON, written into a buffer of `capacity` bytes to start with.
fn json_sized(v: &impl serde::Serialize, capacity: usize) -> Result<String, StoreError> {
    let mut buf = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buf, v).map_err(|e| StoreError::Invalid(e.to_string()))?;
    String::from_utf8(buf).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// A change record's payload: the memory as JSON, written into a buffer sized for it
/// up front (the content and about a kilobyte of other fields) rather than grown by
/// doubling from 128 bytes.
fn change_json(m: &Memory) -> Result<String, StoreError> {
    let extra =
        m.title.as_ref().map_or(0, String::len) + m.tags.iter().map(String::len).sum::<usize>();
    json_sized(m, m.content.len() + extra + 1024)
}

/// What a memory's row holds that its fields do not hold as they are: the JSON of its
/// lists and metadata.
struct RowJson {
    tags: String,
    metadata: String,
    related_ids: String,
}

impl RowJson {
    fn of(m: &Memory) -> Result<RowJson, StoreError> {
        Ok(RowJson {
            tags: json(&m.tags)?,
            metadata: json(&m.metadata)?,
            related_ids: json(&m.related_ids)?,
        })
    }
}

/// How many columns [`bind_columns`] binds.
const BOUND: usize = 28;

/// Binds every column of `m`'s row but `rid`, in `COLUMNS` order, as `?1`–`?28` of `stmt`,
/// borrowing the memory's strings (SQLite copies them as it binds).
fn bind_columns(
    stmt: &mut rusqlite::Statement<'_>,
    m: &Memory,
    j: &RowJson,
) -> rusqlite::Result<()> {
    let ts = |t: Option<engram_core::Timestamp>| t.map(to_micros);
    let id: &[u8] = m.id.as_bytes();
    let columns: [&dyn rusqlite::ToSql; BOUND] = [
        &id,
        &m.tenant.as_str(),
        &m.scope.user_id,
        &m.scope.agent_id,
        &m.scope.project,
        &m.scope.domain,
        &m.scope.session_id,
        &m.content,
        &m.memory_type.as_str(),
        &m.source.as_str(),
        &m.source_ref,
        &m.title,
        &j.tags,
        &j.metadata,
        &m.content_hash,
        &m.embedding_status.as_str(),
        &m.embedding_model,
        &ts(m.embedding_updated_at),
        &m.embedding_error,
        &to_micros(m.created_at),
        &to_micros(m.updated_at),
        &to_micros(m.accessed_at),
        &ts(m.deleted_at),
        &ts(m.valid_from),
        &ts(m.valid_to),
        &m.version,
        &j.related_ids,
        &m.conversation_id,
    ];
    for (i, v) in columns.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, v)?;
    }
    Ok(())
}

fn column_names() -> Vec<&'static str> {
    COLUMNS
        .split(", ")
        .map(|c| c.trim().trim_start_matches("m."))
        .collect()
}

static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let names = column_names();
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO memories ({}) VALUES ({})",
        names.join(", "),
        placeholders.join(", ")
    )
});

static UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    let names = column_names();
    let sets: Vec<String> = names
        .iter()
        .enumerate()
        .skip(2) // id and tenant never change
        .map(|(i, n)| format!("{n} = ?{}", i + 1))
        .collect();
    let status = names
        .iter()
        .position(|n| *n == "embedding_status")
        .expect("status column")
        + 1;
    // Back to pending (content changed, or a retry was asked for): a fresh start in the queue.
    let requeue = format!(
        "embedding_attempts = CASE WHEN ?{status} = 'pending' THEN 0 ELSE embedding_attempts END, \
         embedding_claim = CASE WHEN ?{status} = 'pending' THEN NULL ELSE embedding_claim END, \
         embedding_lease_until = CASE WHEN ?{status} = 'pending' THEN NULL ELSE embedding_lease_until END, \
         embedding_next_attempt_at = CASE WHEN ?{status} = 'pending' THEN NULL ELSE embedding_next_attempt_at END"
    );
    format!(
        "UPDATE memories SET {}, {requeue} WHERE id = ?1 AND tenant = ?2 AND version = ?{} AND deleted_at IS NULL RETURNING rid",
        sets.join(", "),
        names.len() + 1
    )
});

/// A new memory's JSON columns and change record. The store makes them before the write
/// reaches the writer thread: everything a write job needs that takes no lock, done off
/// the one thread all writes wait for. The other columns are bound from the memory itself
/// ([`bind_columns`]), without copies.
pub(crate) struct NewRow {
    json: RowJson,
    change: String,
}

impl NewRow {
    pub(crate) fn of(m: &Memory) -> Result<NewRow, StoreError> {
        Ok(NewRow {
            json: RowJson::of(m)?,
            change: change_json(m)?,
        })
    }

    /// Inserts the row, queues its session's context vectors, and appends
    /// its `Created` change record; returns the row id.
    pub(crate) fn insert(&self, conn: &Connection, m: &Memory) -> Result<i64, StoreError> {
        let rid = insert_row(conn, m, &self.json)?;
        append_change_with(conn, m, engram_core::ChangeOp::Created, &self.change)?;
        Ok(rid)
    }
}

/// Inserts a new memory row (`j`: its JSON columns) and queues its session's context
/// vectors; returns the row id.
fn insert_row(conn: &Connection, m: &Memory, j: &RowJson) -> Result<i64, StoreError> {
    conn.prepare_cached(&INSERT_SQL)
        .and_then(|mut s| {
            bind_columns(&mut s, m, j)?;
            s.raw_execute()
        })
        .map_err(db_err)?;
    let rid = conn.last_insert_rowid();
    // What a trigger on `memories` did before migration 10 (a trigger made every insert
    // pay for a statement journal): a new turn changes its neighbours' windows.
    if let (Some(session), None) = (&m.scope.session_id, m.deleted_at) {
        conn.prepare_cached(
            "INSERT INTO context_queue (tenant, session_id) VALUES (?1, ?2)
             ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1",
        )
        .and_then(|mut s| s.execute(rusqlite::params![m.tenant.as_str(), session]))
        .map_err(db_err)?;
    }
    Ok(rid)
}

/// Overwrites every column of an existing row (matched by id and version); a deleted
/// memory's vectors go too. Returns the row id when a row matched.
pub(crate) fn update_row(
    conn: &Connection,
    m: &Memory,
    expected_version: i64,
) -> Result<Option<i64>, StoreError> {
    let j = RowJson::of(m)?;
    let rid: Option<i64> = conn
        .prepare_cached(&UPDATE_SQL)
        .and_then(|mut s| {
            bind_columns(&mut s, m, &j)?;
            s.raw_bind_parameter(BOUND + 1, expected_version)?;
            let mut rows = s.raw_query();
            rows.next()?.map(|r| r.get(0)).transpose()
        })
        .map_err(db_err)?;
    if let (Some(rid), Some(_)) = (rid, m.deleted_at) {
        // Deleted means deleted from the derived state too.
        conn.prepare_cached("DELETE FROM memory_vectors WHERE rid = ?1")
            .and_then(|mut s| s.execute([rid]))
            .map_err(db_err)?;
    }
    Ok(rid)
}

/// Appends a change record holding the memory's state after the change.
pub(crate) fn append_change(
    conn: &Connection,
    m: &Memory,
    op: engram_core::ChangeOp,
) -> Result<(), StoreError> {
    append_change_with(conn, m, op, &change_json(m)?)
}

/// [`append_change`] with the payload already made (`change_json(m)`).
fn append_change_with(
    conn: &Connection,
    m: &Memory,
    op: engram_core::ChangeOp,
    payload: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO changes (tenant, memory_id, op, version, at, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(rusqlite::params![
            m.tenant.as_str(),
            m.id.as_bytes().as_slice(),
            op.as_str(),
            m.version,
            to_micros(m.updated_at),
            payload,
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

pub(crate) fn get_by_id(
    conn: &Connection,
    tenant: &str,
    id: &[u8],
    include_deleted: bool,
) -> Result<Option<Memory>, StoreError> {
    let sql = if include_deleted {
        format!("SELECT {COLUMNS} FROM memories m WHERE m.id = ?1 AND m.tenant = ?2")
    } else {
        format!("SELECT {COLUMNS} FROM memories m WHERE m.id = ?1 AND m.tenant = ?2 AND m.deleted_at IS NULL")
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt.query(rusqlite::params![id, tenant]).map_err(db_err)?;
    match rows.next().map_err(db_err)? {
        Some(r) => Ok(Some(row_to_memory(r).map_err(db_err)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bind_columns` binds one value per column `row_to_memory` reads, and the
    /// statements have exactly those parameters (the update one more: the version).
    #[test]
    fn every_column_is_bound() {
        assert_eq!(column_names().len(), BOUND);
        let mut conn = Connection::open_in_memory().unwrap();
        crate::migrate::migrate(&mut conn).unwrap();
        assert_eq!(conn.prepare(&INSERT_SQL).unwrap().parameter_count(), BOUND);
        assert_eq!(
            conn.prepare(&UPDATE_SQL).unwrap().parameter_count(),
            BOUND + 1
        );
    }
}
