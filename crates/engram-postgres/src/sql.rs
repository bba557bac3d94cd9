//! Building SQL with numbered parameters, and the one filter every query shares.

use engram_core::time::to_micros;
use engram_core::MemoryFilter;
use tokio_postgres::types::ToSql;

type Param = Box<dyn ToSql + Sync + Send>;

/// Parameters of a statement being built: `bind` adds one and returns its placeholder.
#[derive(Default)]
pub(crate) struct Sql {
    params: Vec<Param>,
}

impl Sql {
    pub(crate) fn bind<T: ToSql + Sync + Send + 'static>(&mut self, v: T) -> String {
        self.params.push(Box::new(v));
        format!("${}", self.params.len())
    }

    pub(crate) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The condition (over `memories m`) for a tenant's live memories that pass `f`.
pub(crate) fn filter_sql(s: &mut Sql, tenant: &str, f: &MemoryFilter) -> String {
    let t = s.bind(tenant.to_owned());
    let mut cond = format!("m.tenant = {t} AND m.deleted_at IS NULL");
    if !f.memory_types.is_empty() {
        let types: Vec<String> = f
            .memory_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        cond.push_str(&format!(" AND m.memory_type = ANY({})", s.bind(types)));
    }
    if let Some(v) = f.source {
        cond.push_str(&format!(
            " AND m.source = {}",
            s.bind(v.as_str().to_owned())
        ));
    }
    if let Some(v) = f.embedding_status {
        cond.push_str(&format!(
            " AND m.embedding_status = {}",
            s.bind(v.as_str().to_owned())
        ));
    }
    for (col, v) in [
        ("user_id", &f.user_id),
        ("agent_id", &f.agent_id),
        ("project", &f.project),
        ("domain", &f.domain),
        ("session_id", &f.session_id),
    ] {
        if let Some(v) = v {
            cond.push_str(&format!(" AND m.{col} = {}", s.bind(v.clone())));
        }
    }
    if let Some(t) = f.created_after {
        cond.push_str(&format!(" AND m.created_at > {}", s.bind(to_micros(t))));
    }
    if let Some(t) = f.created_before {
        cond.push_str(&format!(" AND m.created_at < {}", s.bind(to_micros(t))));
    }
    if !f.tags.is_empty() {
        cond.push_str(&format!(
            " AND m.tags @> {}::text[]",
            s.bind(f.tags.clone())
        ));
    }
    for (key, want) in &f.metadata {
        // jsonb equality: numbers compare by value (1 = 1.0), types never mix.
        let k = s.bind(key.clone());
        let v = s.bind(want.clone());
        cond.push_str(&format!(" AND (m.metadata -> {k}::text) = {v}::jsonb"));
    }
    cond
}
