//! The change log on Postgres. Records are appended with the change, without a `seq`; the
//! sequencer numbers them in commit order before anyone reads them. Numbering at insert
//! (an identity column) would let two concurrent transactions commit out of number
//! order, and a reader that had seen the higher number would never see the lower one.

use deadpool_postgres::GenericClient;
use engram_core::time::to_micros;
use engram_core::working::Record;
use engram_core::{ChangeOp, Memory, StoreError};

use crate::db_err;

/// Appends a change record holding the memory's state after the change (`entity`
/// defaults to `'memory'`).
pub(crate) async fn append<C: GenericClient>(
    c: &C,
    m: &Memory,
    op: ChangeOp,
) -> Result<(), StoreError> {
    let payload = serde_json::to_value(m).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let st = c
        .prepare_cached(
            "INSERT INTO changes (tenant, memory_id, op, version, at, payload) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .map_err(db_err)?;
    c.execute(
        &st,
        &[
            &m.tenant.as_str(),
            &m.id.0,
            &op.as_str(),
            &m.version,
            &to_micros(m.updated_at),
            &payload,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Appends a change record about a working-tier record (`entity = 'record'`), holding
/// its state after the change (for a delete, its last state). Numbered by the sequencer
/// like every other entry, so records and memories share one `seq` order.
pub(crate) async fn append_record<C: GenericClient>(
    c: &C,
    r: &Record,
    op: ChangeOp,
) -> Result<(), StoreError> {
    let payload = serde_json::to_value(r).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let st = c
        .prepare_cached(
            "INSERT INTO changes (tenant, memory_id, op, version, at, payload, entity) \
             VALUES ($1, $2, $3, $4, $5, $6, 'record')",
        )
        .await
        .map_err(db_err)?;
    c.execute(
        &st,
        &[
            &r.tenant.as_str(),
            &r.id.0,
            &op.as_str(),
            &r.version,
            &to_micros(r.updated_at),
            &payload,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Numbers every committed, unnumbered record after the highest number given so far.
/// One sequencer at a time (an advisory lock), so numbers only grow, and a record whose
/// transaction commits later gets a higher number than every record numbered before.
pub(crate) async fn sequence(
    client: &mut deadpool_postgres::Object,
    lock: i64,
) -> Result<u64, StoreError> {
    let tx = client.transaction().await.map_err(db_err)?;
    let pending = tx
        .query_opt("SELECT 1 FROM changes WHERE seq IS NULL LIMIT 1", &[])
        .await
        .map_err(db_err)?;
    if pending.is_none() {
        return Ok(0);
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(db_err)?;
    let n = tx
        .execute(
            "WITH base AS (SELECT coalesce(max(seq), 0) AS s FROM changes),
                  todo AS (SELECT id, row_number() OVER (ORDER BY id) AS n
                           FROM changes WHERE seq IS NULL)
             UPDATE changes c SET seq = base.s + todo.n FROM base, todo WHERE c.id = todo.id",
            &[],
        )
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(n)
}
