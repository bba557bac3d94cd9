//! The working tier's records (`RecordStore`) on Postgres: one `records` table, the kind's
//! fields as a `jsonb` body, the envelope in indexed columns. A record's write, its change
//! record and its mirror memory's write (through the functions every memory write uses)
//! commit in one transaction, or none of them does.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use engram_core::time::{from_micros, to_micros};
use engram_core::working::{Record, RecordChange, RecordId, RecordKind, RecordPage, RecordQuery};
use engram_core::{ChangeOp, MemoryId, MirrorWrite, RecordStore, Scope, StoreError, TenantId};
use tokio_postgres::Row;

use crate::sql::Sql;
use crate::{changes, db_err, insert_memory, locks, record as observe, replace_memory, PgStore};

/// The columns `record_from_row` reads, in order.
const COLUMNS: &str = "id, tenant, kind, user_id, agent_id, project, domain, session_id, \
    parent_id, status, key, memory_id, body, created_at, updated_at, version";

fn corrupt(what: &str) -> StoreError {
    StoreError::Other(format!("corrupt record row: {what}"))
}

fn record_from_row(r: &Row) -> Result<Record, StoreError> {
    let tenant: String = r.get(1);
    let kind: String = r.get(2);
    let body = match r.get::<_, serde_json::Value>(12) {
        serde_json::Value::Object(m) => m,
        _ => return Err(corrupt("body")),
    };
    Ok(Record {
        id: RecordId(r.get(0)),
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        kind: RecordKind::parse(&kind, "kind").map_err(|_| corrupt("kind"))?,
        scope: Scope {
            user_id: r.get(3),
            agent_id: r.get(4),
            project: r.get(5),
            domain: r.get(6),
            session_id: r.get(7),
        },
        parent_id: r.get::<_, Option<uuid::Uuid>>(8).map(RecordId),
        status: r.get(9),
        key: r.get(10),
        memory_id: r.get::<_, Option<uuid::Uuid>>(11).map(MemoryId),
        body,
        created_at: from_micros(r.get(13)),
        updated_at: from_micros(r.get(14)),
        version: r.get(15),
    })
}

/// The mirror memory's write, through the same functions every memory write uses.
async fn write_mirror<C: GenericClient>(
    c: &C,
    tenant: &TenantId,
    mirror: &MirrorWrite,
) -> Result<(), StoreError> {
    if mirror.memory().tenant != *tenant {
        return Err(StoreError::Invalid(
            "the mirror memory belongs to another tenant".into(),
        ));
    }
    match mirror {
        MirrorWrite::Insert(m) => insert_memory(c, m).await,
        MirrorWrite::Replace {
            next,
            expected_version,
            op,
        } => replace_memory(c, next, *expected_version, *op).await,
    }
}

async fn insert<C: GenericClient>(
    c: &C,
    r: &Record,
    mirror: Option<&MirrorWrite>,
) -> Result<(), StoreError> {
    let body = serde_json::Value::Object(r.body.clone());
    let st = c
        .prepare_cached(&format!(
            "INSERT INTO records ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .await
        .map_err(db_err)?;
    c.execute(
        &st,
        &[
            &r.id.0,
            &r.tenant.as_str(),
            &r.kind.as_str(),
            &r.scope.user_id,
            &r.scope.agent_id,
            &r.scope.project,
            &r.scope.domain,
            &r.scope.session_id,
            &r.parent_id.map(|p| p.0),
            &r.status,
            &r.key,
            &r.memory_id.map(|m| m.0),
            &body,
            &to_micros(r.created_at),
            &to_micros(r.updated_at),
            &r.version,
        ],
    )
    .await
    .map_err(db_err)?;
    changes::append_record(c, r, ChangeOp::Created).await?;
    if let Some(m) = mirror {
        write_mirror(c, &r.tenant, m).await?;
    }
    Ok(())
}

/// Why a compare-and-swap on a record matched no row: it is gone, or at another version.
async fn missed<C: GenericClient>(
    c: &C,
    r: &Record,
    expected_version: i64,
) -> Result<(), StoreError> {
    let st = c
        .prepare_cached("SELECT version FROM records WHERE id = $1 AND tenant = $2")
        .await
        .map_err(db_err)?;
    let row = c
        .query_opt(&st, &[&r.id.0, &r.tenant.as_str()])
        .await
        .map_err(db_err)?;
    match row.map(|row| row.get::<_, i64>(0)) {
        None => Err(StoreError::NotFound),
        Some(v) => Err(StoreError::Conflict(format!(
            "record is at version {v}, not {expected_version}"
        ))),
    }
}

async fn replace<C: GenericClient>(
    c: &C,
    next: &Record,
    expected_version: i64,
    mirror: Option<&MirrorWrite>,
) -> Result<(), StoreError> {
    let body = serde_json::Value::Object(next.body.clone());
    // The kind, the id and created_at never change.
    let st = c
        .prepare_cached(
            "UPDATE records SET user_id = $3, agent_id = $4, project = $5, domain = $6, \
             session_id = $7, parent_id = $8, status = $9, key = $10, memory_id = $11, \
             body = $12, updated_at = $13, version = $14 \
             WHERE id = $1 AND tenant = $2 AND version = $15",
        )
        .await
        .map_err(db_err)?;
    let n = c
        .execute(
            &st,
            &[
                &next.id.0,
                &next.tenant.as_str(),
                &next.scope.user_id,
                &next.scope.agent_id,
                &next.scope.project,
                &next.scope.domain,
                &next.scope.session_id,
                &next.parent_id.map(|p| p.0),
                &next.status,
                &next.key,
                &next.memory_id.map(|m| m.0),
                &body,
                &to_micros(next.updated_at),
                &next.version,
                &expected_version,
            ],
        )
        .await
        .map_err(db_err)?;
    if n == 0 {
        return missed(c, next, expected_version).await;
    }
    changes::append_record(c, next, ChangeOp::Updated).await?;
    if let Some(m) = mirror {
        write_mirror(c, &next.tenant, m).await?;
    }
    Ok(())
}

async fn delete<C: GenericClient>(
    c: &C,
    r: &Record,
    mirror: Option<&MirrorWrite>,
) -> Result<(), StoreError> {
    let st = c
        .prepare_cached("DELETE FROM records WHERE id = $1 AND tenant = $2 AND version = $3")
        .await
        .map_err(db_err)?;
    let n = c
        .execute(&st, &[&r.id.0, &r.tenant.as_str(), &r.version])
        .await
        .map_err(db_err)?;
    if n == 0 {
        return missed(c, r, r.version).await;
    }
    changes::append_record(c, r, ChangeOp::Deleted).await?;
    if let Some(m) = mirror {
        write_mirror(c, &r.tenant, m).await?;
    }
    Ok(())
}

/// The statement (text and parameters) for one page of `q`: its conditions, then the
/// keyset position, in (created_at, id) order either way, one row more than the limit
/// so the caller knows whether more follow.
fn list_sql(tenant: &str, q: &RecordQuery) -> (String, Sql) {
    let mut s = Sql::default();
    let mut cond = format!("tenant = {}", s.bind(tenant.to_owned()));
    if let Some(k) = q.kind {
        cond.push_str(&format!(" AND kind = {}", s.bind(k.as_str().to_owned())));
    }
    for (col, v) in [
        ("user_id", &q.user_id),
        ("agent_id", &q.agent_id),
        ("project", &q.project),
        ("domain", &q.domain),
        ("session_id", &q.session_id),
        ("key", &q.key),
    ] {
        if let Some(v) = v {
            cond.push_str(&format!(" AND {col} = {}", s.bind(v.clone())));
        }
    }
    if let Some(p) = q.parent_id {
        cond.push_str(&format!(" AND parent_id = {}", s.bind(p.0)));
    }
    if !q.statuses.is_empty() {
        cond.push_str(&format!(
            " AND status = ANY({}::text[])",
            s.bind(q.statuses.clone())
        ));
    }
    if let Some(a) = &q.assigned_agent {
        // The same expression as the index `records_assigned`.
        cond.push_str(&format!(
            " AND (body->>'assigned_agent') = {}",
            s.bind(a.clone())
        ));
    }
    if let Some(t) = q.updated_before {
        cond.push_str(&format!(" AND updated_at < {}", s.bind(to_micros(t))));
    }
    let (cmp, dir) = if q.oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some((at, id)) = q.after {
        let a = s.bind(to_micros(at));
        let i = s.bind(id.0);
        cond.push_str(&format!(" AND (created_at, id) {cmp} ({a}, {i})"));
    }
    // Bound, not formatted in: the statement is prepared once per connection.
    let limit = s.bind(i64::from(q.limit) + 1);
    let sql = format!(
        "SELECT {COLUMNS} FROM records WHERE {cond} \
         ORDER BY created_at {dir}, id {dir} LIMIT {limit}"
    );
    (sql, s)
}

/// Removes a tenant's records (or one user's) and their change records. For a user: the
/// records the user holds now and every change record that names the user, so neither
/// a record's current state nor an earlier one stays.
pub(crate) async fn purge<C: GenericClient>(
    c: &C,
    tenant: &str,
    user: Option<&str>,
) -> Result<(), StoreError> {
    match user {
        Some(u) => {
            c.execute(
                "DELETE FROM changes WHERE tenant = $1 AND entity = 'record' AND (
                     payload -> 'scope' ->> 'user_id' = $2
                     OR memory_id IN (SELECT id FROM records WHERE tenant = $1 AND user_id = $2))",
                &[&tenant, &u],
            )
            .await
            .map_err(db_err)?;
            c.execute(
                "DELETE FROM records WHERE tenant = $1 AND user_id = $2",
                &[&tenant, &u],
            )
            .await
            .map_err(db_err)?;
        }
        None => {
            c.execute(
                "DELETE FROM changes WHERE tenant = $1 AND entity = 'record'",
                &[&tenant],
            )
            .await
            .map_err(db_err)?;
            c.execute("DELETE FROM records WHERE tenant = $1", &[&tenant])
                .await
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Runs one record write (the record, its change record, its mirror) in a transaction of
/// its own. On an error the transaction is dropped, and so rolled back whole.
macro_rules! in_transaction {
    ($store:expr, $op:literal, |$tx:ident| $write:expr) => {{
        let started = std::time::Instant::now();
        let mut client = $store.client().await?;
        let $tx = client.transaction().await.map_err(db_err)?;
        $write.await?;
        $tx.commit().await.map_err(db_err)?;
        observe($op, started);
        Ok(())
    }};
}

impl PgStore {
    async fn query_records(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Record>, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(db_err)?;
        let rows = c.query(&st, params).await.map_err(db_err)?;
        rows.iter().map(record_from_row).collect()
    }
}

#[async_trait]
impl RecordStore for PgStore {
    async fn insert_record(
        &self,
        record: &Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        in_transaction!(self, "insert_record", |tx| insert(
            &tx,
            record,
            mirror.as_ref()
        ))
    }

    async fn get_record(
        &self,
        tenant: &TenantId,
        id: RecordId,
    ) -> Result<Option<Record>, StoreError> {
        let started = std::time::Instant::now();
        let sql = format!("SELECT {COLUMNS} FROM records WHERE id = $1 AND tenant = $2");
        let out = self.query_records(&sql, &[&id.0, &tenant.as_str()]).await;
        observe("get_record", started);
        Ok(out?.pop())
    }

    async fn get_keyed(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        agent_id: Option<&str>,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        // The condition is the unique index's expression, so the index answers it.
        let sql = format!(
            "SELECT {COLUMNS} FROM records WHERE tenant = $1 AND kind = $2 \
             AND coalesce(agent_id, '') = $3 AND key = $4"
        );
        let agent = agent_id.unwrap_or("");
        Ok(self
            .query_records(&sql, &[&tenant.as_str(), &kind.as_str(), &agent, &key])
            .await?
            .pop())
    }

    async fn list_records(
        &self,
        tenant: &TenantId,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        let started = std::time::Instant::now();
        let (sql, s) = list_sql(tenant.as_str(), query);
        let mut items = self.query_records(&sql, &s.refs()).await?;
        let has_more = items.len() > query.limit as usize;
        items.truncate(query.limit as usize);
        observe("list_records", started);
        Ok(RecordPage { items, has_more })
    }

    async fn replace_record(
        &self,
        next: &Record,
        expected_version: i64,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        in_transaction!(self, "replace_record", |tx| replace(
            &tx,
            next,
            expected_version,
            mirror.as_ref()
        ))
    }

    async fn delete_record(
        &self,
        record: &Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        in_transaction!(self, "delete_record", |tx| delete(
            &tx,
            record,
            mirror.as_ref()
        ))
    }

    async fn record_changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<RecordChange>, StoreError> {
        let mut client = self.client().await?;
        changes::sequence(&mut client, self.lock_key(locks::SEQUENCER)).await?;
        let st = client
            .prepare_cached(
                "SELECT seq, op, at, payload FROM changes
                 WHERE tenant = $1 AND entity = 'record' AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await
            .map_err(db_err)?;
        let rows = client
            .query(&st, &[&tenant.as_str(), &after_seq, &i64::from(limit)])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let op: String = r.get(1);
                Ok(RecordChange {
                    seq,
                    op: ChangeOp::parse(&op)
                        .ok_or_else(|| StoreError::Other(format!("unknown change op {op}")))?,
                    at: from_micros(r.get(2)),
                    record: serde_json::from_value(r.get(3)).map_err(|e| {
                        StoreError::Other(format!("corrupt change record {seq}: {e}"))
                    })?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statements are prepared once per connection and cached by their text: queries of
    /// one shape must give one text whatever their values, and values never reach it.
    #[test]
    fn list_statements_depend_on_the_query_shape_only() {
        let q = |user: &str, limit: u32, after: Option<(i64, RecordId)>| RecordQuery {
            kind: Some(RecordKind::Task),
            user_id: Some(user.into()),
            statuses: vec!["open".into()],
            after: after.map(|(at, id)| (from_micros(at), id)),
            limit,
            ..RecordQuery::default()
        };
        let (a, pa) = list_sql("t1", &q("alice'; --", 5, Some((1, RecordId::new()))));
        let (b, pb) = list_sql("t2", &q("bob", 50, Some((2, RecordId::new()))));
        assert_eq!(a, b);
        assert!(!a.contains("alice") && !a.contains("t1"));
        assert_eq!(pa.refs().len(), pb.refs().len());
        assert!(a.contains("(created_at, id) < ($5, $6)"), "{a}");
        assert!(
            a.ends_with("ORDER BY created_at DESC, id DESC LIMIT $7"),
            "{a}"
        );
        let mut oldest = q("x", 5, None);
        oldest.oldest_first = true;
        let (c, _) = list_sql("t1", &oldest);
        assert!(
            c.ends_with("ORDER BY created_at ASC, id ASC LIMIT $5"),
            "{c}"
        );
        assert!(c.starts_with(&format!("SELECT {COLUMNS} FROM records WHERE tenant = $1")));
    }
}
