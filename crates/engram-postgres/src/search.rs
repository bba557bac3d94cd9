//! Search over Postgres: full-text with `tsvector` (English stemming) ranked by
//! `ts_rank`, and nearest vectors with pgvector: exact over a selective filter's
//! candidates, otherwise through the model's HNSW index with iterative scans, so a filter
//! never loses results to a top-k cut; candidates are then scored exactly. The
//! re-ranker's fields are read with one narrow query, so hybrid search loads only its hits.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use engram_core::rerank::RerankFields;
use engram_core::search::query_terms;
use engram_core::time::from_micros;
use engram_core::{
    MemoryFilter, MemoryId, ModelInfo, Nearest, Scored, SearchIndex, StoreError, TenantId,
};
use pgvector::Vector;

use crate::embedding::literal;
use crate::sql::{filter_sql, Sql};
use crate::{db_err, PgStore};

/// The fewest candidates a graph search takes from pgvector's HNSW index (and its
/// `hnsw.ef_search`): the width that searches for 100 candidates walked when recall@10
/// was measured at 100,000 memories (docs/benchmarks.md), kept for searches that keep
/// fewer, as a keyword or semantic search for its top `k` does.
const GRAPH_CANDIDATES: u32 = 400;

/// Filtered semantic searches with at most this many candidates are answered exactly.
pub(crate) const EXACT_MAX: usize = 5_000;

/// A `to_tsquery` expression matching any of the terms. Terms are alphanumeric words
/// (`query_terms` splits on everything else), so nothing in user input is query syntax.
fn tsquery(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| {
            t.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Bounds of the partial index `memory_vectors_scope` (migration 0006): what surely fits
/// in a B-tree entry. The query repeats them so that the planner can use the index.
const SCOPE_MAX_DIM: usize = 384;
const SCOPE_MAX_BYTES: usize = 200;

/// The user when the filter is a user and nothing else, and that user's vectors of this
/// model are within the bounds of `memory_vectors_scope`.
fn scoped_user<'a>(f: &'a MemoryFilter, model: &ModelInfo) -> Option<&'a str> {
    let user = f.user_id.as_deref()?;
    let only_user = *f
        == MemoryFilter {
            user_id: f.user_id.clone(),
            ..Default::default()
        };
    (only_user
        && model.dim <= SCOPE_MAX_DIM
        && user.len() <= SCOPE_MAX_BYTES
        && model.key().len() <= SCOPE_MAX_BYTES)
        .then_some(user)
}

/// Mixes a memory's best window with its context vector, as the port defines.
fn mix(turn: f32, context: Option<f32>, w: f32) -> f32 {
    match context {
        Some(c) => (1.0 - w) * turn + w * c,
        None => turn,
    }
}

/// Which memories exact scoring reads, beyond the filter's.
enum Among {
    /// Every one passing the filter.
    All,
    /// These row ids (the graph's candidates).
    Rids(Vec<i64>),
    /// These memories.
    Ids(Vec<uuid::Uuid>),
}

/// One semantic search: whose memories, which model's vectors, the query vector, the filter.
struct Probe<'a> {
    tenant: &'a str,
    model: &'a ModelInfo,
    vector: &'a [f32],
    filter: &'a MemoryFilter,
}

impl PgStore {
    /// Exact scores of the live memories passing the filter (and, when given, of these
    /// row ids or these ids): the best window of the current content, and the context
    /// vector. Plain joins, one row per vector, merged here: Postgres runs them as index
    /// nested loops several times faster than a lateral subquery per memory.
    async fn exact_scores<C: GenericClient>(
        &self,
        c: &C,
        p: &Probe<'_>,
        among: Among,
        with_context: bool,
    ) -> Result<HashMap<MemoryId, (f32, Option<f32>)>, StoreError> {
        let mut s = Sql::default();
        // The context vector is left-joined, so each memory is read once (a memory in no
        // session has none).
        let context = |q: &str, k: &str, rid: &str| {
            if with_context {
                (
                    format!("1 - (x.embedding <=> {q})"),
                    format!("LEFT JOIN context_vectors x ON x.rid = {rid} AND x.model_key = {k}"),
                )
            } else {
                ("NULL::float8".to_owned(), String::new())
            }
        };
        let sql = match (among, scoped_user(p.filter, p.model)) {
            // One user's vectors, read side by side from the covering index
            // `memory_vectors_scope`: they are of the memories' current content and live
            // memories only (migration 0005), so the memories need not be read at all.
            (Among::All, Some(user)) => {
                let t = s.bind(p.tenant.to_owned());
                let q = s.bind(Vector::from(p.vector.to_vec()));
                let k = s.bind(p.model.key());
                let u = s.bind(user.to_owned());
                let (context_score, context_join) = context(&q, &k, "v.rid");
                format!(
                    "SELECT v.memory_id, 1 - (v.embedding <=> {q}), {context_score}
                     FROM memory_vectors v {context_join}
                     WHERE v.tenant = {t} AND v.model_key = {k} AND v.user_id = {u}
                       AND octet_length(v.user_id) <= {SCOPE_MAX_BYTES}
                       AND octet_length(v.model_key) <= {SCOPE_MAX_BYTES}
                       AND vector_dims(v.embedding) <= {SCOPE_MAX_DIM}"
                )
            }
            (among, _) => {
                let mut cond = filter_sql(&mut s, p.tenant, p.filter);
                let q = s.bind(Vector::from(p.vector.to_vec()));
                let k = s.bind(p.model.key());
                match among {
                    Among::All => {}
                    Among::Rids(rids) => {
                        cond.push_str(&format!(" AND m.rid = ANY({})", s.bind(rids)));
                    }
                    Among::Ids(ids) => {
                        cond.push_str(&format!(" AND m.id = ANY({})", s.bind(ids)));
                    }
                }
                let (context_score, context_join) = context(&q, &k, "m.rid");
                format!(
                    "SELECT m.id, 1 - (v.embedding <=> {q}), {context_score} FROM memories m
                     JOIN memory_vectors v ON v.rid = m.rid AND v.model_key = {k}
                                          AND v.content_hash = m.content_hash
                     {context_join}
                     WHERE {cond}"
                )
            }
        };
        let st = c.prepare_cached(&sql).await.map_err(db_err)?;
        let rows = c.query(&st, &s.refs()).await.map_err(db_err)?;
        // One row per window of the memory's content: its best window counts.
        let mut scores: HashMap<MemoryId, (f32, Option<f32>)> = HashMap::new();
        for r in &rows {
            let id = MemoryId(r.get(0));
            let turn = r.get::<_, f64>(1) as f32;
            let context = r.get::<_, Option<f64>>(2).map(|c| c as f32);
            let e = scores.entry(id).or_insert((f32::NEG_INFINITY, context));
            e.0 = e.0.max(turn);
        }
        // A memory without vectors of its current content is not a semantic hit (the inner
        // join leaves it out).
        Ok(scores)
    }

    /// Row ids of up to `n` memories passing the filter whose vectors in `table` are
    /// nearest, through the model's HNSW index.
    async fn ann_candidates<C: GenericClient>(
        &self,
        c: &C,
        table: &str,
        p: &Probe<'_>,
        n: u32,
    ) -> Result<Vec<i64>, StoreError> {
        let mut s = Sql::default();
        let cond = filter_sql(&mut s, p.tenant, p.filter);
        let dim = p.model.dim;
        let q = s.bind(Vector::from(p.vector.to_vec()));
        // The model key is a literal so the planner can use the model's partial index.
        // Vectors of replaced content are dropped by the exact re-scoring, not here: a
        // condition across the two tables makes the planner misjudge the join and sort
        // every vector instead of walking the index.
        let sql = format!(
            "SELECT v.rid FROM {table} v JOIN memories m ON m.rid = v.rid
             WHERE v.model_key = {key} AND {cond}
             ORDER BY v.embedding::vector({dim}) <=> {q}::vector({dim}) LIMIT {n}",
            key = literal(&p.model.key()),
        );
        let st = c.prepare_cached(&sql).await.map_err(db_err)?;
        let rows = c.query(&st, &s.refs()).await.map_err(db_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether at most `max` live memories pass the filter.
    async fn few_candidates<C: GenericClient>(
        &self,
        c: &C,
        tenant: &str,
        filter: &MemoryFilter,
        max: usize,
    ) -> Result<bool, StoreError> {
        let mut s = Sql::default();
        let cond = filter_sql(&mut s, tenant, filter);
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM memories m WHERE {cond} LIMIT {}) c",
            max + 1
        );
        let st = c.prepare_cached(&sql).await.map_err(db_err)?;
        let n: i64 = c.query_one(&st, &s.refs()).await.map_err(db_err)?.get(0);
        Ok(n as usize <= max)
    }
}

#[async_trait]
impl SearchIndex for PgStore {
    async fn keyword(
        &self,
        tenant: &TenantId,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
        _bm25: engram_core::Bm25,
    ) -> Result<Vec<Scored>, StoreError> {
        let expr = tsquery(&query_terms(query));
        if expr.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let mut s = Sql::default();
        let cond = filter_sql(&mut s, tenant.as_str(), filter);
        let q = s.bind(expr);
        let limit = s.bind(i64::from(limit));
        // ts_rank with normalisation 1 (divided by 1 + log of the document length) is the
        // BM25-like score: term frequency saturates, long texts are damped; it has no
        // inverse document frequency, so k1 and b do not apply.
        let sql = format!(
            "SELECT m.id, ts_rank(m.tsv, q, 1) AS score
             FROM memories m, to_tsquery('english', {q}) q
             WHERE m.tsv @@ q AND {cond}
             ORDER BY score DESC, m.rid LIMIT {limit}"
        );
        let c = self.client().await?;
        let st = c.prepare_cached(&sql).await.map_err(db_err)?;
        let rows = c.query(&st, &s.refs()).await.map_err(db_err)?;
        crate::record("keyword_search", started);
        Ok(rows
            .iter()
            .map(|r| Scored {
                id: MemoryId(r.get(0)),
                score: r.get::<_, f32>(1),
            })
            .collect())
    }

    async fn nearest(
        &self,
        tenant: &TenantId,
        model: &ModelInfo,
        vector: &[f32],
        filter: &MemoryFilter,
        want: Nearest,
    ) -> Result<Vec<Scored>, StoreError> {
        // pgvector's walk is set from `limit` alone, for both purposes: a narrower walk
        // for fusion has not been measured on Postgres.
        let Nearest {
            limit,
            context_weight,
            ..
        } = want;
        if vector.len() != model.dim {
            return Err(StoreError::Invalid(format!(
                "query vector has dimension {}, the model {} makes {}",
                vector.len(),
                model.key(),
                model.dim
            )));
        }
        let started = std::time::Instant::now();
        let w = context_weight.clamp(0.0, 1.0);
        let tenant = tenant.as_str();
        let mut client = self.client().await?;
        let probe = Probe {
            tenant,
            model,
            vector,
            filter,
        };
        // A selective filter's candidates are scored exactly (two statements, no
        // transaction: the count only chooses the method); otherwise through the index,
        // in a transaction for its settings. (Counting and scoring in one statement,
        // gated on the count, costs more: for a broad filter Postgres plans the gated
        // join in parallel and starts workers that do nothing.)
        let few = self
            .few_candidates(&client, tenant, filter, self.exact_search_max)
            .await?;
        let scores = if few {
            self.exact_scores(&client, &probe, Among::All, w > 0.0)
                .await?
        } else {
            let tx = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(db_err)?;
            // Enough candidates that mixing in the context vectors cannot push a true
            // top `limit` memory out, and never fewer than [`GRAPH_CANDIDATES`]: the
            // graph's recall depends on how wide it walks, not on how many results the
            // caller keeps. Iterative scans keep walking the graph until the filter has
            // let `n` through.
            let n = limit.saturating_mul(4).max(GRAPH_CANDIDATES);
            let iterative = if self.iterative_scan {
                "SET LOCAL hnsw.iterative_scan = relaxed_order;"
            } else {
                ""
            };
            tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {n}; {iterative}"))
                .await
                .map_err(db_err)?;
            let mut rids = self
                .ann_candidates(&tx, "memory_vectors", &probe, n)
                .await?;
            if w > 0.0 {
                rids.extend(
                    self.ann_candidates(&tx, "context_vectors", &probe, n)
                        .await?,
                );
            }
            rids.sort_unstable();
            rids.dedup();
            let scores = self
                .exact_scores(&tx, &probe, Among::Rids(rids), w > 0.0)
                .await?;
            tx.commit().await.map_err(db_err)?;
            scores
        };
        let mut out: Vec<Scored> = scores
            .into_iter()
            .map(|(id, (turn, ctx))| Scored {
                id,
                score: mix(turn, ctx, w),
            })
            .collect();
        engram_core::search::sort_desc(&mut out);
        out.truncate(limit as usize);
        crate::record("vector_search", started);
        Ok(out)
    }

    /// Exact scores of these memories: the graph's search is approximate, so a keyword
    /// candidate it left out may be nearer than its last.
    async fn similarities(
        &self,
        tenant: &TenantId,
        model: &ModelInfo,
        vector: &[f32],
        ids: &[MemoryId],
        context_weight: f32,
    ) -> Result<Vec<Scored>, StoreError> {
        if ids.is_empty() || vector.len() != model.dim {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let w = context_weight.clamp(0.0, 1.0);
        let client = self.client().await?;
        let probe = Probe {
            tenant: tenant.as_str(),
            model,
            vector,
            filter: &MemoryFilter::default(),
        };
        let ids = Among::Ids(ids.iter().map(|i| i.0).collect());
        let scores = self.exact_scores(&client, &probe, ids, w > 0.0).await?;
        crate::record("vector_similarities", started);
        Ok(scores
            .into_iter()
            .map(|(id, (turn, ctx))| Scored {
                id,
                score: mix(turn, ctx, w),
            })
            .collect())
    }

    /// The re-ranker's fields read in one query of the few columns they come from, so a
    /// hybrid search does not load every candidate in full (tags, metadata, every column).
    async fn rerank_fields(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        speaker_key: &str,
    ) -> Result<HashMap<MemoryId, RerankFields>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let started = std::time::Instant::now();
        let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.0).collect();
        let c = self.client().await?;
        // The speaker only when the metadata value is a string, as `RerankFields::of`
        // reads it from a loaded memory.
        let st = c
            .prepare_cached(
                "SELECT m.id, m.session_id,
                        CASE jsonb_typeof(m.metadata -> $3) WHEN 'string' THEN m.metadata ->> $3 END,
                        m.valid_from, m.content
                 FROM memories m
                 WHERE m.id = ANY($1) AND m.tenant = $2 AND m.deleted_at IS NULL",
            )
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&st, &[&ids, &tenant.as_str(), &speaker_key])
            .await
            .map_err(db_err)?;
        crate::record("rerank_fields", started);
        Ok(rows
            .iter()
            .map(|r| {
                let fields = RerankFields::new(
                    r.get::<_, Option<&str>>(1).map(Arc::from),
                    r.get::<_, Option<&str>>(2).map(Arc::from),
                    r.get::<_, Option<i64>>(3).map(from_micros),
                    r.get::<_, &str>(4),
                );
                (MemoryId(r.get(0)), fields)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsquery_ors_plain_words() {
        let terms = query_terms("When is the key rotating? a|b & !c");
        assert_eq!(tsquery(&terms), "key | rotating | b | c");
        assert_eq!(tsquery(&[]), "");
    }

    #[test]
    fn scope_bounds_are_the_index_predicate() {
        let migration = include_str!("../migrations/0006_vector_scope_index.sql");
        for bound in [
            format!("octet_length(user_id) <= {SCOPE_MAX_BYTES}"),
            format!("octet_length(model_key) <= {SCOPE_MAX_BYTES}"),
            format!("vector_dims(embedding) <= {SCOPE_MAX_DIM}"),
        ] {
            assert!(migration.contains(&bound), "{bound}");
        }
    }

    #[test]
    fn context_mixes_by_weight() {
        assert_eq!(mix(0.8, None, 0.5), 0.8);
        assert!((mix(0.8, Some(0.4), 0.5) - 0.6).abs() < 1e-6);
    }
}
