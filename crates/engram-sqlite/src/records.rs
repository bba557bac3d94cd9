//! The working tier's records (`RecordStore`): one `records` table, the kind's fields as a
//! JSON body, the envelope in indexed columns. A record's mirror memory is written in the
//! same transaction, through the same functions memories use.

use async_trait::async_trait;
use engram_core::time::{from_micros, to_micros};
use engram_core::working::{Record, RecordChange, RecordId, RecordKind, RecordPage, RecordQuery};
use engram_core::{ChangeOp, MirrorWrite, RecordStore, StoreError, TenantId};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::NewRow;
use crate::{db_err, replace_memory, SqliteStore};

const COLUMNS: &str = "id, tenant, kind, user_id, agent_id, project, domain, session_id, \
    parent_id, status, key, memory_id, body, created_at, updated_at, version";

fn row_to_record(r: &rusqlite::Row<'_>) -> Result<Record, StoreError> {
    let corrupt = |what: &str| StoreError::Other(format!("corrupt record row: {what}"));
    let id: Vec<u8> = r.get(0).map_err(db_err)?;
    let tenant: String = r.get(1).map_err(db_err)?;
    let kind: String = r.get(2).map_err(db_err)?;
    let parent: Option<Vec<u8>> = r.get(8).map_err(db_err)?;
    let memory: Option<Vec<u8>> = r.get(11).map_err(db_err)?;
    let body: String = r.get(12).map_err(db_err)?;
    Ok(Record {
        id: RecordId::from_bytes(&id).ok_or_else(|| corrupt("id"))?,
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        kind: RecordKind::parse(&kind, "kind").map_err(|_| corrupt("kind"))?,
        scope: engram_core::Scope {
            user_id: r.get(3).map_err(db_err)?,
            agent_id: r.get(4).map_err(db_err)?,
            project: r.get(5).map_err(db_err)?,
            domain: r.get(6).map_err(db_err)?,
            session_id: r.get(7).map_err(db_err)?,
        },
        parent_id: parent.as_deref().and_then(RecordId::from_bytes),
        status: r.get(9).map_err(db_err)?,
        key: r.get(10).map_err(db_err)?,
        memory_id: memory
            .as_deref()
            .and_then(engram_core::MemoryId::from_bytes),
        body: serde_json::from_str(&body).map_err(|_| corrupt("body"))?,
        created_at: from_micros(r.get(13).map_err(db_err)?),
        updated_at: from_micros(r.get(14).map_err(db_err)?),
        version: r.get(15).map_err(db_err)?,
    })
}

fn values(r: &Record) -> Result<Vec<Value>, StoreError> {
    let text = |v: &Option<String>| v.clone().map(Value::Text).unwrap_or(Value::Null);
    let blob = |v: Option<&[u8; 16]>| v.map(|b| Value::Blob(b.to_vec())).unwrap_or(Value::Null);
    Ok(vec![
        Value::Blob(r.id.as_bytes().to_vec()),
        Value::Text(r.tenant.as_str().to_owned()),
        Value::Text(r.kind.as_str().to_owned()),
        text(&r.scope.user_id),
        text(&r.scope.agent_id),
        text(&r.scope.project),
        text(&r.scope.domain),
        text(&r.scope.session_id),
        blob(r.parent_id.as_ref().map(RecordId::as_bytes)),
        text(&r.status),
        text(&r.key),
        blob(r.memory_id.as_ref().map(|m| m.as_bytes())),
        Value::Text(
            serde_json::to_string(&r.body).map_err(|e| StoreError::Invalid(e.to_string()))?,
        ),
        Value::Integer(to_micros(r.created_at)),
        Value::Integer(to_micros(r.updated_at)),
        Value::Integer(r.version),
    ])
}

fn append_record_change(conn: &Connection, r: &Record, op: ChangeOp) -> Result<(), StoreError> {
    let payload = serde_json::to_string(r).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO changes (tenant, memory_id, op, version, at, payload, entity) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'record')",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.tenant.as_str(),
            r.id.as_bytes().as_slice(),
            op.as_str(),
            r.version,
            to_micros(r.updated_at),
            payload
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

fn write_mirror(
    conn: &Connection,
    tenant: &TenantId,
    mirror: &MirrorWrite,
) -> Result<(), StoreError> {
    if mirror.memory().tenant != *tenant {
        return Err(StoreError::Invalid(
            "the mirror memory belongs to another tenant".into(),
        ));
    }
    match mirror {
        MirrorWrite::Insert(m) => NewRow::of(m)?.insert(conn, m).map(|_| ()),
        MirrorWrite::Replace {
            next,
            expected_version,
            op,
        } => replace_memory(conn, next, *expected_version, *op),
    }
}

fn insert(conn: &Connection, r: &Record, mirror: Option<&MirrorWrite>) -> Result<(), StoreError> {
    let sql = format!("INSERT INTO records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)");
    let vals = values(r)?;
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(vals)))
        // A unique violation (the id, or kind, agent and key) is `Conflict`, as db_err maps it.
        .map_err(db_err)?;
    append_record_change(conn, r, ChangeOp::Created)?;
    if let Some(m) = mirror {
        write_mirror(conn, &r.tenant, m)?;
    }
    Ok(())
}

/// Whether the record exists at `expected_version`; `Err` says why not.
fn check_version(conn: &Connection, r: &Record, expected_version: i64) -> Result<(), StoreError> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT version FROM records WHERE id = ?1 AND tenant = ?2")
        .and_then(|mut s| {
            s.query_row(
                params![r.id.as_bytes().as_slice(), r.tenant.as_str()],
                |row| row.get(0),
            )
            .optional()
        })
        .map_err(db_err)?;
    match v {
        None => Err(StoreError::NotFound),
        Some(v) if v != expected_version => Err(StoreError::Conflict(format!(
            "record is at version {v}, not {expected_version}"
        ))),
        Some(_) => Ok(()),
    }
}

fn replace(
    conn: &Connection,
    next: &Record,
    expected_version: i64,
    mirror: Option<&MirrorWrite>,
) -> Result<(), StoreError> {
    check_version(conn, next, expected_version)?;
    let sql = "UPDATE records SET user_id = ?3, agent_id = ?4, project = ?5, domain = ?6, \
        session_id = ?7, parent_id = ?8, status = ?9, key = ?10, memory_id = ?11, body = ?12, \
        updated_at = ?13, version = ?14 WHERE id = ?1 AND tenant = ?2";
    let mut vals = values(next)?;
    // Drop kind (2) and created_at (13) from the column list's values.
    vals.remove(13);
    vals.remove(2);
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(vals)))
        .map_err(db_err)?;
    append_record_change(conn, next, ChangeOp::Updated)?;
    if let Some(m) = mirror {
        write_mirror(conn, &next.tenant, m)?;
    }
    Ok(())
}

fn delete(conn: &Connection, r: &Record, mirror: Option<&MirrorWrite>) -> Result<(), StoreError> {
    check_version(conn, r, r.version)?;
    conn.prepare_cached("DELETE FROM records WHERE id = ?1 AND tenant = ?2")
        .and_then(|mut s| s.execute(params![r.id.as_bytes().as_slice(), r.tenant.as_str()]))
        .map_err(db_err)?;
    append_record_change(conn, r, ChangeOp::Deleted)?;
    if let Some(m) = mirror {
        write_mirror(conn, &r.tenant, m)?;
    }
    Ok(())
}

fn query_rows(conn: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        out.push(row_to_record(row)?);
    }
    Ok(out)
}

fn list(conn: &Connection, tenant: &str, q: &RecordQuery) -> Result<RecordPage, StoreError> {
    let mut cond = String::from("tenant = ?1");
    let mut args = vec![Value::Text(tenant.to_owned())];
    let push = |cond: &mut String, args: &mut Vec<Value>, sql: &str, v: Value| {
        args.push(v);
        cond.push_str(&sql.replace('?', &format!("?{}", args.len())));
    };
    if let Some(k) = q.kind {
        push(
            &mut cond,
            &mut args,
            " AND kind = ?",
            Value::Text(k.as_str().into()),
        );
    }
    let scope = [
        ("user_id", &q.user_id),
        ("agent_id", &q.agent_id),
        ("project", &q.project),
        ("domain", &q.domain),
        ("session_id", &q.session_id),
        ("key", &q.key),
    ];
    for (col, v) in scope {
        if let Some(v) = v {
            push(
                &mut cond,
                &mut args,
                &format!(" AND {col} = ?"),
                Value::Text(v.clone()),
            );
        }
    }
    if let Some(p) = q.parent_id {
        push(
            &mut cond,
            &mut args,
            " AND parent_id = ?",
            Value::Blob(p.as_bytes().to_vec()),
        );
    }
    if !q.statuses.is_empty() {
        cond.push_str(" AND status IN (");
        for (i, s) in q.statuses.iter().enumerate() {
            args.push(Value::Text(s.clone()));
            cond.push_str(&format!("{}?{}", if i > 0 { ", " } else { "" }, args.len()));
        }
        cond.push(')');
    }
    if let Some(a) = &q.assigned_agent {
        // The same expression as the index `records_assigned`.
        push(
            &mut cond,
            &mut args,
            " AND json_extract(body, '$.assigned_agent') = ?",
            Value::Text(a.clone()),
        );
    }
    if let Some(t) = q.updated_before {
        push(
            &mut cond,
            &mut args,
            " AND updated_at < ?",
            Value::Integer(to_micros(t)),
        );
    }
    let (cmp, order) = if q.oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some((at, id)) = q.after {
        args.push(Value::Integer(to_micros(at)));
        args.push(Value::Blob(id.as_bytes().to_vec()));
        let (a, b) = (args.len() - 1, args.len());
        cond.push_str(&format!(
            " AND (created_at {cmp} ?{a} OR (created_at = ?{a} AND id {cmp} ?{b}))"
        ));
    }
    args.push(Value::Integer(i64::from(q.limit) + 1));
    let sql = format!(
        "SELECT {COLUMNS} FROM records WHERE {cond} ORDER BY created_at {order}, id {order} LIMIT ?{}",
        args.len()
    );
    let mut items = query_rows(conn, &sql, args)?;
    let has_more = items.len() > q.limit as usize;
    items.truncate(q.limit as usize);
    Ok(RecordPage { items, has_more })
}

/// Removes a tenant's records (or one user's) and their change records.
pub(crate) fn purge(conn: &Connection, tenant: &str, user: Option<&str>) -> Result<(), StoreError> {
    match user {
        Some(u) => {
            conn.execute(
                "DELETE FROM changes WHERE tenant = ?1 AND entity = 'record' \
                 AND (json_extract(payload, '$.scope.user_id') = ?2 OR memory_id IN \
                 (SELECT id FROM records WHERE tenant = ?1 AND user_id = ?2))",
                params![tenant, u],
            )
            .map_err(db_err)?;
            conn.execute(
                "DELETE FROM records WHERE tenant = ?1 AND user_id = ?2",
                params![tenant, u],
            )
            .map_err(db_err)?;
        }
        None => {
            conn.execute("DELETE FROM records WHERE tenant = ?1", params![tenant])
                .map_err(db_err)?;
        }
    }
    Ok(())
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn insert_record(
        &self,
        record: &Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        let r = record.clone();
        self.inner
            .writer
            .write("insert_record", move |conn, _| {
                insert(conn, &r, mirror.as_ref())
            })
            .await
    }

    async fn get_record(
        &self,
        tenant: &TenantId,
        id: RecordId,
    ) -> Result<Option<Record>, StoreError> {
        let tenant = tenant.as_str().to_owned();
        self.inner
            .readers
            .run("get_record", move |conn| {
                let sql = format!("SELECT {COLUMNS} FROM records WHERE id = ?1 AND tenant = ?2");
                Ok(query_rows(
                    conn,
                    &sql,
                    vec![Value::Blob(id.as_bytes().to_vec()), Value::Text(tenant)],
                )?
                .pop())
            })
            .await
    }

    async fn get_keyed(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        agent_id: Option<&str>,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        let args = vec![
            Value::Text(tenant.as_str().to_owned()),
            Value::Text(kind.as_str().to_owned()),
            Value::Text(agent_id.unwrap_or("").to_owned()),
            Value::Text(key.to_owned()),
        ];
        self.inner
            .readers
            .run("get_keyed", move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM records WHERE tenant = ?1 AND kind = ?2 \
                     AND ifnull(agent_id, '') = ?3 AND key = ?4"
                );
                Ok(query_rows(conn, &sql, args)?.pop())
            })
            .await
    }

    async fn list_records(
        &self,
        tenant: &TenantId,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        let (tenant, q) = (tenant.as_str().to_owned(), query.clone());
        self.inner
            .readers
            .run("list_records", move |conn| list(conn, &tenant, &q))
            .await
    }

    async fn replace_record(
        &self,
        next: &Record,
        expected_version: i64,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        let r = next.clone();
        self.inner
            .writer
            .write("replace_record", move |conn, _| {
                replace(conn, &r, expected_version, mirror.as_ref())
            })
            .await
    }

    async fn delete_record(
        &self,
        record: &Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        let r = record.clone();
        self.inner
            .writer
            .write("delete_record", move |conn, _| {
                delete(conn, &r, mirror.as_ref())
            })
            .await
    }

    async fn record_changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<RecordChange>, StoreError> {
        let tenant = tenant.as_str().to_owned();
        self.inner
            .readers
            .run("record_changes", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, op, at, payload FROM changes WHERE tenant = ?1 AND entity = 'record' \
                         AND seq > ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![tenant, after_seq, limit], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(db_err)?;
                rows.into_iter()
                    .map(|(seq, op, at, payload)| {
                        Ok(RecordChange {
                            seq,
                            op: ChangeOp::parse(&op)
                                .ok_or_else(|| StoreError::Other(format!("unknown change op {op}")))?,
                            at: from_micros(at),
                            record: serde_json::from_str(&payload).map_err(|e| {
                                StoreError::Other(format!("corrupt change record {seq}: {e}"))
                            })?,
                        })
                    })
                    .collect()
            })
            .await
    }
}
