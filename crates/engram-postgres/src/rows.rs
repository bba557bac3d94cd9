//! Mapping between memories and rows.

use deadpool_postgres::GenericClient;
use engram_core::time::{from_micros, to_micros};
use engram_core::{
    EmbeddingStatus, Memory, MemoryId, MemoryType, Scope, Source, StoreError, TenantId,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::db_err;

/// The columns `memory_from_row` reads, in order.
pub(crate) const COLUMNS: &str = "m.id, m.tenant, m.user_id, m.agent_id, m.project, m.domain, m.session_id, \
    m.content, m.memory_type, m.source, m.source_ref, m.title, m.tags, m.metadata, m.content_hash, \
    m.embedding_status, m.embedding_model, m.embedding_updated_at, m.embedding_error, m.created_at, \
    m.updated_at, m.accessed_at, m.deleted_at, m.valid_from, m.valid_to, m.version, m.related_ids, \
    m.conversation_id";

fn corrupt(what: &str) -> StoreError {
    StoreError::Other(format!("corrupt column {what}"))
}

pub(crate) fn memory_from_row(r: &Row) -> Result<Memory, StoreError> {
    let ts = |i: usize| r.get::<_, Option<i64>>(i).map(from_micros);
    let tenant: String = r.get(1);
    let memory_type: String = r.get(8);
    let source: String = r.get(9);
    let status: String = r.get(15);
    let metadata = match r.get::<_, serde_json::Value>(13) {
        serde_json::Value::Object(m) => m,
        _ => return Err(corrupt("metadata")),
    };
    Ok(Memory {
        id: MemoryId(r.get(0)),
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        scope: Scope {
            user_id: r.get(2),
            agent_id: r.get(3),
            project: r.get(4),
            domain: r.get(5),
            session_id: r.get(6),
        },
        content: r.get(7),
        memory_type: MemoryType::parse(&memory_type, "memory_type")
            .map_err(|_| corrupt("memory_type"))?,
        source: Source::parse(&source, "source").map_err(|_| corrupt("source"))?,
        source_ref: r.get(10),
        title: r.get(11),
        tags: r.get(12),
        metadata,
        content_hash: r.get(14),
        embedding_status: EmbeddingStatus::parse(&status, "embedding_status")
            .map_err(|_| corrupt("embedding_status"))?,
        embedding_model: r.get(16),
        embedding_updated_at: ts(17),
        embedding_error: r.get(18),
        created_at: from_micros(r.get(19)),
        updated_at: from_micros(r.get(20)),
        accessed_at: from_micros(r.get(21)),
        deleted_at: ts(22),
        valid_from: ts(23),
        valid_to: ts(24),
        version: r.get(25),
        related_ids: serde_json::from_value(r.get(26)).map_err(|_| corrupt("related_ids"))?,
        conversation_id: r.get(27),
    })
}

/// The text the full-text index holds for a memory: content, title and tags.
fn indexed_text(m: &Memory) -> String {
    let mut s = m.content.clone();
    if let Some(t) = &m.title {
        s.push('\n');
        s.push_str(t);
    }
    for t in &m.tags {
        s.push('\n');
        s.push_str(t);
    }
    s
}

/// A memory's column values in `COLUMNS` order, then its indexed text.
struct Values {
    v: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Values {
    fn of(m: &Memory) -> Result<Values, StoreError> {
        let micros = |t: Option<engram_core::Timestamp>| t.map(to_micros);
        let related =
            serde_json::to_value(&m.related_ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let v: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(m.id.0),
            Box::new(m.tenant.as_str().to_owned()),
            Box::new(m.scope.user_id.clone()),
            Box::new(m.scope.agent_id.clone()),
            Box::new(m.scope.project.clone()),
            Box::new(m.scope.domain.clone()),
            Box::new(m.scope.session_id.clone()),
            Box::new(m.content.clone()),
            Box::new(m.memory_type.as_str().to_owned()),
            Box::new(m.source.as_str().to_owned()),
            Box::new(m.source_ref.clone()),
            Box::new(m.title.clone()),
            Box::new(m.tags.clone()),
            Box::new(serde_json::Value::Object(m.metadata.clone())),
            Box::new(m.content_hash.clone()),
            Box::new(m.embedding_status.as_str().to_owned()),
            Box::new(m.embedding_model.clone()),
            Box::new(micros(m.embedding_updated_at)),
            Box::new(m.embedding_error.clone()),
            Box::new(to_micros(m.created_at)),
            Box::new(to_micros(m.updated_at)),
            Box::new(to_micros(m.accessed_at)),
            Box::new(micros(m.deleted_at)),
            Box::new(micros(m.valid_from)),
            Box::new(micros(m.valid_to)),
            Box::new(m.version),
            Box::new(related),
            Box::new(m.conversation_id.clone()),
            Box::new(indexed_text(m)),
        ];
        Ok(Values { v })
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.v
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn column_names() -> Vec<&'static str> {
    COLUMNS
        .split(", ")
        .map(|c| c.trim().trim_start_matches("m."))
        .collect()
}

static INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let names = column_names();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO memories ({}, tsv) VALUES ({}, to_tsvector('english', ${}))",
        names.join(", "),
        marks.join(", "),
        names.len() + 1
    )
});

static UPDATE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let names = column_names();
    let n = names.len();
    let sets: Vec<String> = names
        .iter()
        .enumerate()
        .skip(2) // id and tenant never change
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect();
    let status = names
        .iter()
        .position(|c| *c == "embedding_status")
        .map(|i| i + 1)
        .unwrap_or(0);
    let deleted = names
        .iter()
        .position(|c| *c == "deleted_at")
        .map(|i| i + 1)
        .unwrap_or(0);
    // Back to pending (content changed, or a retry was asked for): a fresh start in the queue.
    let requeue = format!(
        "embedding_attempts = CASE WHEN ${status}::text = 'pending' THEN 0 ELSE embedding_attempts END, \
         embedding_claim = CASE WHEN ${status}::text = 'pending' THEN NULL ELSE embedding_claim END, \
         embedding_lease_until = CASE WHEN ${status}::text = 'pending' THEN NULL ELSE embedding_lease_until END, \
         embedding_next_attempt_at = CASE WHEN ${status}::text = 'pending' THEN NULL ELSE embedding_next_attempt_at END"
    );
    format!(
        "UPDATE memories SET {}, {requeue}, \
         tsv = CASE WHEN ${deleted}::bigint IS NULL THEN to_tsvector('english', ${}) END \
         WHERE id = $1 AND tenant = $2 AND version = ${} AND deleted_at IS NULL",
        sets.join(", "),
        n + 1,
        n + 2
    )
});

/// Inserts a new memory row.
pub(crate) async fn insert_row<C: GenericClient>(c: &C, m: &Memory) -> Result<(), StoreError> {
    let vals = Values::of(m)?;
    let st = c.prepare_cached(&INSERT_SQL).await.map_err(db_err)?;
    c.execute(&st, &vals.refs()).await.map_err(db_err)?;
    Ok(())
}

/// Overwrites every column of an existing live row matched by id and version. Returns
/// whether a row matched.
pub(crate) async fn update_row<C: GenericClient>(
    c: &C,
    m: &Memory,
    expected_version: i64,
) -> Result<bool, StoreError> {
    let vals = Values::of(m)?;
    let mut refs = vals.refs();
    refs.push(&expected_version);
    let st = c.prepare_cached(&UPDATE_SQL).await.map_err(db_err)?;
    let n = c.execute(&st, &refs).await.map_err(db_err)?;
    Ok(n > 0)
}

pub(crate) async fn get_by_id<C: GenericClient>(
    c: &C,
    tenant: &str,
    id: uuid::Uuid,
    include_deleted: bool,
) -> Result<Option<Memory>, StoreError> {
    let sql = if include_deleted {
        format!("SELECT {COLUMNS} FROM memories m WHERE m.id = $1 AND m.tenant = $2")
    } else {
        format!(
            "SELECT {COLUMNS} FROM memories m WHERE m.id = $1 AND m.tenant = $2 AND m.deleted_at IS NULL"
        )
    };
    let st = c.prepare_cached(&sql).await.map_err(db_err)?;
    let row = c.query_opt(&st, &[&id, &tenant]).await.map_err(db_err)?;
    row.as_ref().map(memory_from_row).transpose()
}
