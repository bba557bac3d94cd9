//! Search: keyword (BM25), semantic (nearest vectors) and hybrid (both, fused), over a
//! tenant's live memories, always through a filter.
//!
//! The store answers the two retrievers (`SearchIndex`); this module validates the request,
//! embeds the query, fuses the two ranked lists, re-ranks with the conversation-aware
//! boosts of [`crate::rerank`], loads the memories and checks each one against the filter
//! once more before it is returned, so a stale index can lose a hit but never leak one.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;
use tracing::instrument;

use crate::embed::Embedder;
use crate::error::CoreError;
use crate::filter::MemoryFilter;
use crate::ids::{MemoryId, TenantId};
use crate::memory::Memory;
use crate::ports::{EmbeddingStore, MemoryStore, Nearest, NearestFor, SearchIndex};
use crate::rerank::{self, RerankConfig, RerankFields};
use crate::time::now;

pub const K_DEFAULT: u32 = 10;
pub const K_MAX: u32 = 100;
/// Longest query, in bytes.
pub const QUERY_MAX_BYTES: usize = 8 * 1024;

/// Which retrievers a search uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    #[default]
    Hybrid,
    Semantic,
    Keyword,
}

impl SearchMode {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "hybrid" => Ok(SearchMode::Hybrid),
            "semantic" => Ok(SearchMode::Semantic),
            "keyword" => Ok(SearchMode::Keyword),
            _ => Err(CoreError::validation(
                "mode",
                "must be one of: hybrid, semantic, keyword",
            )),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Semantic => "semantic",
            SearchMode::Keyword => "keyword",
        }
    }
}

/// A validated search request.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchRequest {
    pub query: String,
    pub filter: MemoryFilter,
    pub k: u32,
    pub mode: SearchMode,
    /// Hits scoring below this are dropped (the `score` of the mode: BM25 for keyword,
    /// cosine similarity for semantic, the fused score for hybrid).
    pub min_score: Option<f32>,
}

impl SearchRequest {
    pub fn new(
        query: &str,
        filter: MemoryFilter,
        k: Option<u32>,
        mode: SearchMode,
        min_score: Option<f32>,
    ) -> Result<Self, CoreError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(CoreError::validation("query", "must not be empty"));
        }
        if query.len() > QUERY_MAX_BYTES {
            return Err(CoreError::validation(
                "query",
                format!("must be at most {QUERY_MAX_BYTES} bytes"),
            ));
        }
        let k = k.unwrap_or(K_DEFAULT);
        if !(1..=K_MAX).contains(&k) {
            return Err(CoreError::validation(
                "k",
                format!("must be an integer from 1 to {K_MAX}"),
            ));
        }
        if min_score.is_some_and(|s| !s.is_finite()) {
            return Err(CoreError::validation(
                "min_score",
                "must be a finite number",
            ));
        }
        Ok(SearchRequest {
            query: query.to_owned(),
            filter,
            k,
            mode,
            min_score,
        })
    }
}

/// A memory id with a retriever's score (higher is better).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub id: MemoryId,
    pub score: f32,
}

/// Each retriever's score of a hit, and the fused one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HitScores {
    /// Cosine similarity of the query to the memory's best window.
    pub vector: Option<f32>,
    /// BM25 (higher is better).
    pub keyword: Option<f32>,
    /// The score the hits are ranked by.
    pub fused: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    pub memory: Memory,
    pub score: f32,
    pub scores: HitScores,
    /// 1-based.
    pub rank: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub hits: Vec<SearchHit>,
    pub took_ms: f64,
    /// The mode that actually ran: a hybrid search runs as keyword while no embedder or
    /// no vectors are available.
    pub mode: SearchMode,
    /// Why the search ran in a lesser mode than asked, if it did.
    pub degraded: Option<String>,
}

/// BM25's parameters: term-frequency saturation `k1` and length normalisation `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25 {
    pub k1: f32,
    pub b: f32,
}

impl Default for Bm25 {
    /// The textbook k1 with a weak length normalisation: a turn of a conversation is not
    /// less relevant for being long (b = 0.2 measured best on LoCoMo; 0.75 is the usual
    /// value for documents).
    fn default() -> Self {
        Bm25 { k1: 1.2, b: 0.2 }
    }
}

/// How hybrid search fuses and re-ranks.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    /// Candidates each retriever contributes before fusion (at least `k`).
    pub candidates: u32,
    /// Weight of the vector score's z-score in the fused score.
    pub vector_weight: f32,
    /// Weight of the keyword score's z-score in the fused score.
    pub keyword_weight: f32,
    /// Share of a memory's vector score taken from its context vector (its session
    /// window), when it has one.
    pub context_weight: f32,
    /// Hybrid search embeds the query without the names of the speakers it names (their
    /// turns are boosted by the re-ranker instead): a name says nothing about meaning.
    pub strip_speakers: bool,
    /// Keyword scoring.
    pub bm25: Bm25,
    pub rerank: RerankConfig,
    /// A hit's `accessed_at` is recorded only when the stored one is older than this (as
    /// `relatime` does for a file's access time): a memory found again and again is not
    /// rewritten by every search. Zero: every hit, every time.
    pub touch_resolution: std::time::Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            candidates: 100,
            vector_weight: 1.0,
            keyword_weight: 0.5,
            context_weight: 0.5,
            strip_speakers: true,
            bm25: Bm25::default(),
            rerank: RerankConfig::default(),
            touch_resolution: std::time::Duration::from_secs(60),
        }
    }
}

/// The embedder queries are embedded with, once one is ready (it loads in the background).
#[derive(Clone, Default)]
pub struct EmbedderSlot(Arc<RwLock<Option<Arc<dyn Embedder>>>>);

impl EmbedderSlot {
    pub fn set(&self, e: Arc<dyn Embedder>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
    pub fn get(&self) -> Option<Arc<dyn Embedder>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
pub struct SearchService {
    store: Arc<dyn MemoryStore>,
    index: Arc<dyn SearchIndex>,
    embeddings: Arc<dyn EmbeddingStore>,
    embedder: EmbedderSlot,
    config: Arc<SearchConfig>,
    /// Recent query vectors by (model, query): agents repeat themselves.
    query_cache: Arc<std::sync::Mutex<QueryCache>>,
    speakers: Arc<SpeakerHints>,
}

/// The words of the speakers met in each tenant's hybrid searches, as salted hashes (a
/// guess needs to recognise a name, never to tell it; an erased speaker's name is not
/// kept here). They let hybrid search guess which names a query holds before its keyword
/// half has found the speakers, and so embed the query while that half runs.
#[derive(Default)]
struct SpeakerHints {
    salt: std::hash::RandomState,
    tenants: RwLock<HashMap<TenantId, HashSet<u64>>>,
}

/// Tenants with hints kept; the hints are emptied when they fill.
const HINT_TENANTS_MAX: usize = 4096;
/// Speaker words kept per tenant; beyond it, later speakers are not learned (a guess
/// that misses a name costs a search's vector half time, never its result).
const HINT_WORDS_MAX: usize = 4096;

impl SpeakerHints {
    fn hash(&self, word: &str) -> u64 {
        self.salt.hash_one(word)
    }

    /// The query without the words of speakers met before, as `rerank::strip_names`
    /// would leave it if those speakers were among the candidates.
    fn guess(&self, tenant: &TenantId, query: &str) -> String {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let Some(known) = tenants.get(tenant) else {
            return query.to_owned();
        };
        let named: Vec<String> = rerank::words(query)
            .into_iter()
            .filter(|w| known.contains(&self.hash(w)))
            .collect();
        rerank::strip_names(query, &named)
    }

    fn learn(&self, tenant: &TenantId, speakers: &[&str]) {
        if speakers.is_empty() {
            return;
        }
        let hashes: Vec<u64> = speakers
            .iter()
            .flat_map(|s| rerank::words(s))
            .map(|w| self.hash(&w))
            .collect();
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if tenants.len() >= HINT_TENANTS_MAX && !tenants.contains_key(tenant) {
            tenants.clear();
        }
        let known = tenants.entry(tenant.clone()).or_default();
        for h in hashes {
            if known.len() >= HINT_WORDS_MAX {
                break;
            }
            known.insert(h);
        }
    }
}

/// Query vectors by (model key, query text).
type QueryCache = HashMap<(String, String), Vec<f32>>;

/// Query vectors kept; the cache is emptied when it fills.
const QUERY_CACHE_MAX: usize = 2048;

/// Per-query z-scores of a ranked list; ids missing from the list get the list's lowest.
struct ZScores {
    z: HashMap<MemoryId, f32>,
    mean: f32,
    sd: f32,
    floor: f32,
}

impl ZScores {
    fn of(list: &[Scored]) -> Option<ZScores> {
        if list.is_empty() {
            return None;
        }
        let n = list.len() as f32;
        let mean = list.iter().map(|s| s.score).sum::<f32>() / n;
        let var = list.iter().map(|s| (s.score - mean).powi(2)).sum::<f32>() / n;
        let sd = if var.sqrt() > 1e-6 { var.sqrt() } else { 1.0 };
        let z: HashMap<_, _> = list.iter().map(|s| (s.id, (s.score - mean) / sd)).collect();
        let floor = z.values().copied().fold(f32::INFINITY, f32::min);
        Some(ZScores { z, mean, sd, floor })
    }

    /// Scores of memories the list left out, in the list's terms: one that scores above
    /// the list's lowest (an approximate retriever missed it) gets its own z-score, any
    /// other the list's lowest, as it would have, had the list been exact.
    fn add(&mut self, also: &[Scored]) {
        for s in also {
            let z = ((s.score - self.mean) / self.sd).max(self.floor);
            self.z.entry(s.id).or_insert(z);
        }
    }

    fn get(&self, id: &MemoryId) -> f32 {
        self.z.get(id).copied().unwrap_or(self.floor)
    }
}

/// Fuses a keyword and a vector list by weighted per-query z-scores. `also_near`: vector
/// scores of keyword candidates the vector list left out ([`SearchIndex::similarities`]);
/// they do not move the vector list's mean and spread.
pub fn fuse(
    keyword: &[Scored],
    vector: &[Scored],
    also_near: &[Scored],
    cfg: &SearchConfig,
) -> Vec<Scored> {
    let kz = ZScores::of(keyword);
    let mut vz = ZScores::of(vector);
    if let Some(vz) = vz.as_mut() {
        vz.add(also_near);
    }
    let mut ids: Vec<MemoryId> = keyword.iter().chain(vector).map(|s| s.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out: Vec<Scored> = ids
        .into_iter()
        .map(|id| {
            let k = kz.as_ref().map_or(0.0, |z| z.get(&id));
            let v = vz.as_ref().map_or(0.0, |z| z.get(&id));
            Scored {
                id,
                score: cfg.keyword_weight * k + cfg.vector_weight * v,
            }
        })
        .collect();
    sort_desc(&mut out);
    out
}

/// Best first; ties by id so results are stable.
pub fn sort_desc(v: &mut [Scored]) {
    v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
}

impl SearchService {
    pub fn new(
        store: Arc<dyn MemoryStore>,
        index: Arc<dyn SearchIndex>,
        embeddings: Arc<dyn EmbeddingStore>,
        embedder: EmbedderSlot,
        config: SearchConfig,
    ) -> Self {
        SearchService {
            store,
            index,
            embeddings,
            embedder,
            config: Arc::new(config),
            query_cache: Arc::default(),
            speakers: Arc::default(),
        }
    }

    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// The query's vector, if an embedder is ready and its model is the one the stored
    /// vectors were made with; otherwise why not.
    async fn query_vector(
        &self,
        query: &str,
    ) -> Result<Result<(crate::embed::ModelInfo, Vec<f32>), String>, CoreError> {
        let Some(embedder) = self.embedder.get() else {
            return Ok(Err("no embedder is ready".into()));
        };
        let model = embedder.model();
        match self.embeddings.active_model().await? {
            Some(active) if active == model => {}
            Some(active) => {
                return Ok(Err(format!(
                    "the stored vectors are of {}, the embedder makes {}; run `engram reembed`",
                    active.key(),
                    model.key()
                )))
            }
            None => return Ok(Err("no memory has been embedded yet".into())),
        }
        let cache_key = (model.key(), query.to_owned());
        let cached = self
            .query_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
            .cloned();
        if let Some(v) = cached {
            return Ok(Ok((model, v)));
        }
        match embedder.embed_query(query).await {
            Ok(v) => {
                let mut cache = self.query_cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= QUERY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(cache_key, v.clone());
                Ok(Ok((model, v)))
            }
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Loads the memories of `ids` not loaded yet that still exist and pass the filter.
    async fn load(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        loaded: &mut HashMap<MemoryId, Memory>,
        ids: impl Iterator<Item = MemoryId>,
    ) -> Result<(), CoreError> {
        let ids: Vec<MemoryId> = ids.filter(|id| !loaded.contains_key(id)).collect();
        if ids.is_empty() {
            return Ok(());
        }
        for m in self.store.get_many(tenant, &ids).await? {
            if req.filter.matches(&m) {
                loaded.insert(m.id, m);
            }
        }
        Ok(())
    }

    /// Loads `ranked`'s memories in rank order until `k` are found that still exist and
    /// pass the filter (a memory may have changed or gone since the index saw it).
    async fn load_ranked(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        loaded: &mut HashMap<MemoryId, Memory>,
        ranked: &[Scored],
    ) -> Result<(), CoreError> {
        let k = req.k as usize;
        let (mut found, mut next) = (0, 0);
        while found < k && next < ranked.len() {
            // The shortfall: a memory gone since the index saw it is rare, and costs
            // another round.
            let end = (next + (k - found)).min(ranked.len());
            let batch = &ranked[next..end];
            self.load(tenant, req, loaded, batch.iter().map(|s| s.id))
                .await?;
            found += batch.iter().filter(|s| loaded.contains_key(&s.id)).count();
            next = end;
        }
        Ok(())
    }

    /// Adds what the re-ranker reads of `ids` to `fields`: from the index where it holds
    /// them, else from the memories, which are loaded (and kept in `loaded`). A memory
    /// loaded that no longer passes the filter gets no fields, so it is not ranked.
    async fn rerank_fields(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        fields: &mut HashMap<MemoryId, RerankFields>,
        loaded: &mut HashMap<MemoryId, Memory>,
        ids: impl Iterator<Item = MemoryId>,
    ) -> Result<(), CoreError> {
        let key = &self.config.rerank.speaker_key;
        let mut want: Vec<MemoryId> = ids.filter(|id| !fields.contains_key(id)).collect();
        if want.is_empty() {
            return Ok(());
        }
        fields.extend(self.index.rerank_fields(tenant, &want, key).await?);
        want.retain(|id| !fields.contains_key(id));
        self.load(tenant, req, loaded, want.iter().copied()).await?;
        for id in want {
            if let Some(m) = loaded.get(&id) {
                fields.insert(id, RerankFields::of(m, key));
            }
        }
        Ok(())
    }

    /// The keyword retriever's candidates.
    async fn keyword_leg(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        depth: u32,
    ) -> Result<Vec<Scored>, CoreError> {
        Ok(self
            .index
            .keyword(tenant, &req.query, &req.filter, depth, self.config.bm25)
            .await?)
    }

    /// The vector retriever's candidates for the query embedded as `text`, or why there
    /// are none (no embedder, or vectors of another model).
    async fn vector_leg(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        text: &str,
        depth: u32,
    ) -> Result<Result<VectorLeg, String>, CoreError> {
        let (model, vector) = match self.query_vector(text).await? {
            Ok(v) => v,
            Err(why) => return Ok(Err(why)),
        };
        self.nearest_leg(tenant, req, model, vector, depth)
            .await
            .map(Ok)
    }

    /// The vector retriever's candidates for the query vector `vector` of `model`.
    async fn nearest_leg(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        model: crate::embed::ModelInfo,
        vector: Vec<f32>,
        depth: u32,
    ) -> Result<VectorLeg, CoreError> {
        let nearest = self
            .index
            .nearest(
                tenant,
                &model,
                &vector,
                &req.filter,
                Nearest {
                    limit: depth,
                    // At most `k` of the list are hits.
                    keep: req.k.min(depth),
                    context_weight: self.config.context_weight,
                    // A hybrid search fuses this list with the keyword one; a semantic
                    // search answers with it.
                    purpose: match req.mode {
                        SearchMode::Hybrid => NearestFor::Fusion,
                        SearchMode::Semantic | SearchMode::Keyword => NearestFor::Answer,
                    },
                },
            )
            .await?;
        Ok(VectorLeg {
            nearest,
            query: Some((model, vector)),
            also_near: None,
        })
    }

    /// The vector scores of those of the keyword candidates `keyword` not in `found`
    /// (all when `found` is `None`), for fusion: see [`SearchIndex::similarities`].
    async fn also_near(
        &self,
        tenant: &TenantId,
        (model, vector): (&crate::embed::ModelInfo, &[f32]),
        keyword: &[Scored],
        found: Option<&[Scored]>,
    ) -> Result<Vec<Scored>, CoreError> {
        let found: HashSet<MemoryId> = found.into_iter().flatten().map(|s| s.id).collect();
        let ids: Vec<MemoryId> = keyword
            .iter()
            .map(|s| s.id)
            .filter(|id| !found.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .index
            .similarities(tenant, model, vector, &ids, self.config.context_weight)
            .await?)
    }

    /// Both retrievers of a hybrid search, run at the same time.
    ///
    /// The vector half embeds the query without the names of the speakers it names, and
    /// which speakers those are is known only from the keyword candidates' fields. So the
    /// vector half starts at once with a guess — the query without the names of speakers
    /// this tenant's searches have met before — and is kept when the keyword half confirms
    /// the guess; otherwise it is dropped and run again with the right text. The result is
    /// the same either way; only a wrong guess costs time. With the guess confirmed, the
    /// keyword half also scores its candidates against the guess's vector while the
    /// vector half still searches (the leg's `also_near`; fusion uses those its list left
    /// out).
    async fn hybrid_legs(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        depth: u32,
        fields: &mut HashMap<MemoryId, RerankFields>,
        loaded: &mut HashMap<MemoryId, Memory>,
    ) -> Result<(Vec<Scored>, Result<VectorLeg, String>), CoreError> {
        if !self.config.strip_speakers {
            return tokio::try_join!(
                self.keyword_leg(tenant, req, depth),
                self.vector_leg(tenant, req, &req.query, depth)
            );
        }
        let guess = self.speakers.guess(tenant, &req.query);
        // The guess's vector, handed to the keyword half as soon as it is known.
        let (vector_tx, vector_rx) =
            tokio::sync::oneshot::channel::<(crate::embed::ModelInfo, Vec<f32>)>();
        // The keyword half is a task of its own: the vector half may hold this worker
        // while it searches (the store's choice), and the keyword candidates' fields are
        // then read on another meanwhile instead of after it.
        let keyword_half = {
            let (me, tenant, req, guess) =
                (self.clone(), tenant.clone(), req.clone(), guess.clone());
            AbortOnDropHandle::new(tokio::spawn(async move {
                let keyword = me.keyword_leg(&tenant, &req, depth).await?;
                // The keyword candidates' fields tell which speakers the query names.
                let (mut fields, mut loaded) = (HashMap::new(), HashMap::new());
                let ids = keyword.iter().map(|s| s.id);
                me.rerank_fields(&tenant, &req, &mut fields, &mut loaded, ids)
                    .await?;
                let speakers: Vec<&str> = fields
                    .values()
                    .filter_map(|f| f.speaker.as_deref())
                    .collect();
                me.speakers.learn(&tenant, &speakers);
                let text = rerank::strip_names(
                    &req.query,
                    &rerank::named_speakers(&req.query, speakers.into_iter()),
                );
                // With the guess right, the keyword candidates are scored against its
                // vector while the vector half still searches (fusion needs the ones its
                // list leaves out).
                let mut also_near = None;
                if text == guess {
                    if let Ok((model, vector)) = vector_rx.await {
                        let v = (&model, vector.as_slice());
                        also_near = Some(me.also_near(&tenant, v, &keyword, None).await?);
                    }
                }
                Ok::<_, CoreError>((keyword, fields, loaded, text, also_near))
            }))
        };
        let speculative = async {
            let (model, vector) = match self.query_vector(&guess).await? {
                Ok(v) => v,
                Err(why) => return Ok(Err(why)),
            };
            let _ = vector_tx.send((model.clone(), vector.clone()));
            self.nearest_leg(tenant, req, model, vector, depth)
                .await
                .map(Ok)
        };
        tokio::pin!(speculative, keyword_half);
        let mut early = None;
        let (keyword, f, l, text, also_near) = loop {
            tokio::select! {
                biased;
                done = &mut keyword_half => break joined(done)?,
                leg = &mut speculative, if early.is_none() => early = Some(leg),
            }
        };
        (*fields, *loaded) = (f, l);
        let vector_leg = if text == guess {
            let mut leg = match early {
                Some(leg) => leg?,
                None => speculative.await?,
            };
            if let Ok(leg) = &mut leg {
                leg.also_near = also_near;
            }
            leg
        } else {
            self.vector_leg(tenant, req, &text, depth).await?
        };
        Ok((keyword, vector_leg))
    }

    /// The candidates of `req.mode`'s retrievers, `depth` from each: the keyword list, the
    /// vector list (or why there is none), and the mode they were run as.
    async fn retrieve(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
        depth: u32,
        fields: &mut HashMap<MemoryId, RerankFields>,
        loaded: &mut HashMap<MemoryId, Memory>,
    ) -> Result<Retrieved, CoreError> {
        let (keyword, vector_leg) = match req.mode {
            SearchMode::Keyword => (
                self.keyword_leg(tenant, req, depth).await?,
                Ok(VectorLeg::default()),
            ),
            SearchMode::Semantic => (
                Vec::new(),
                self.vector_leg(tenant, req, &req.query, depth).await?,
            ),
            SearchMode::Hybrid => self.hybrid_legs(tenant, req, depth, fields, loaded).await?,
        };
        let (leg, mode, degraded) = match vector_leg {
            Ok(leg) => (leg, req.mode, None),
            Err(why) if req.mode == SearchMode::Semantic => {
                return Err(CoreError::Unavailable(format!(
                    "semantic search is unavailable: {why}"
                )))
            }
            Err(why) => (
                VectorLeg::default(),
                SearchMode::Keyword,
                Some(format!("ran as keyword search: {why}")),
            ),
        };
        // The keyword candidates the vector half left out, scored against the query's
        // vector all the same (an approximate search may have missed them), unless the
        // keyword half has done so already.
        let also_near = match (mode, leg.also_near, &leg.query) {
            (SearchMode::Hybrid, Some(scored), _) => scored,
            (SearchMode::Hybrid, None, Some((model, vector))) => {
                self.also_near(tenant, (model, vector), &keyword, Some(&leg.nearest))
                    .await?
            }
            _ => Vec::new(),
        };
        Ok(Retrieved {
            keyword,
            nearest: leg.nearest,
            also_near,
            mode,
            degraded,
        })
    }

    #[instrument(skip_all, fields(tenant = %tenant, mode = req.mode.as_str(), k = req.k))]
    pub async fn search(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
    ) -> Result<SearchResult, CoreError> {
        let started = Instant::now();
        let cfg = &self.config;
        // Fusion and re-ranking look at `depth` candidates of each retriever.
        let depth = cfg.candidates.max(req.k).max(cfg.rerank.depth(req.k));
        // A keyword or semantic search ranks by its one retriever's score, so only that
        // list's top `k` can be hits: it asks for those and a margin for memories gone
        // since the index saw them. Should more be gone than the margin covers, it asks
        // again for `depth`.
        let mut want = match req.mode {
            SearchMode::Hybrid => depth,
            _ => req.k.saturating_add(req.k.div_ceil(4)).min(depth),
        };
        let mut loaded: HashMap<MemoryId, Memory> = HashMap::new();
        let mut fields: HashMap<MemoryId, RerankFields> = HashMap::new();
        let (
            Retrieved {
                keyword,
                nearest,
                mode,
                degraded,
                ..
            },
            pool,
        ) = loop {
            let got = self
                .retrieve(tenant, req, want, &mut fields, &mut loaded)
                .await?;
            let ranked = match got.mode {
                SearchMode::Keyword => &got.keyword,
                SearchMode::Semantic => &got.nearest,
                SearchMode::Hybrid => &fuse(&got.keyword, &got.nearest, &got.also_near, cfg),
            };
            let mut pool: Vec<Scored> = ranked.iter().take(want as usize).cloned().collect();
            if got.mode == SearchMode::Hybrid {
                // The re-ranker reads every candidate's fields (held by the index, or loaded).
                let ids = pool.iter().map(|s| s.id);
                self.rerank_fields(tenant, req, &mut fields, &mut loaded, ids)
                    .await?;
                pool = rerank::rerank(&req.query, pool, &fields, &cfg.rerank);
            }
            // Only the hits are loaded, each checked against the filter once more.
            self.load_ranked(tenant, req, &mut loaded, &pool).await?;
            let hits = pool
                .iter()
                .take_while(|s| req.min_score.is_none_or(|min| s.score >= min))
                .filter(|s| loaded.contains_key(&s.id))
                .count();
            // The retriever may have more when it filled the list it was asked for; none
            // of them would count once the list has gone under `min_score`.
            let more = ranked.len() >= want as usize && want < depth;
            let cut = req
                .min_score
                .is_some_and(|min| pool.iter().any(|s| s.score < min));
            if hits >= req.k as usize || cut || !more {
                break (got, pool);
            }
            want = depth;
        };
        let kw: HashMap<_, _> = keyword.iter().map(|s| (s.id, s.score)).collect();
        let vs: HashMap<_, _> = nearest.iter().map(|s| (s.id, s.score)).collect();

        let mut hits = Vec::with_capacity(req.k as usize);
        for s in pool {
            if hits.len() == req.k as usize {
                break;
            }
            if req.min_score.is_some_and(|min| s.score < min) {
                break;
            }
            let Some(memory) = loaded.get(&s.id) else {
                continue;
            };
            hits.push(SearchHit {
                memory: memory.clone(),
                score: s.score,
                scores: HitScores {
                    vector: vs.get(&s.id).copied(),
                    keyword: kw.get(&s.id).copied(),
                    fused: s.score,
                },
                rank: hits.len() as u32 + 1,
            });
        }
        let at = now();
        let stale = chrono::TimeDelta::from_std(cfg.touch_resolution)
            .ok()
            .and_then(|d| at.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let ids: Vec<MemoryId> = hits
            .iter()
            .filter(|h| h.memory.accessed_at < stale)
            .map(|h| h.memory.id)
            .collect();
        if !ids.is_empty() {
            self.store.touch(tenant, &ids, at).await?;
        }
        Ok(SearchResult {
            hits,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            mode,
            degraded,
        })
    }
}

/// What a search's retrievers found.
struct Retrieved {
    keyword: Vec<Scored>,
    /// Empty when the search ran without its vector half (`degraded` says why).
    nearest: Vec<Scored>,
    /// Vector scores of keyword candidates `nearest` left out, where the index gives them.
    also_near: Vec<Scored>,
    /// The mode run: a hybrid search without vectors runs as keyword search.
    mode: SearchMode,
    degraded: Option<String>,
}

/// The vector retriever's candidates and the query vector they were found for.
#[derive(Default)]
struct VectorLeg {
    nearest: Vec<Scored>,
    /// The model and the vector; none without a vector half.
    query: Option<(crate::embed::ModelInfo, Vec<f32>)>,
    /// The keyword candidates' vector scores, when the keyword half scored them already.
    also_near: Option<Vec<Scored>>,
}

/// A search task's result once joined, or an error when the task panicked (as the
/// store's reads fail when theirs do).
fn joined<T>(r: Result<Result<T, CoreError>, tokio::task::JoinError>) -> Result<T, CoreError> {
    r.unwrap_or_else(|e| Err(CoreError::Internal(format!("search task failed: {e}"))))
}

/// Words too common to narrow a keyword search; dropped unless the query has nothing else.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "being", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has",
    "have", "he", "her", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "me", "my", "of", "on", "or", "our", "she", "so", "some", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "to", "too", "us", "was", "we",
    "were", "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your",
];

/// The query's words, lowercased, stopwords dropped (unless nothing else is left),
/// deduplicated, in order.
pub fn query_terms(query: &str) -> Vec<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let content: Vec<&String> = words
        .iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect();
    let chosen: Vec<&String> = if content.is_empty() {
        words.iter().collect()
    } else {
        content
    };
    let mut out: Vec<String> = Vec::new();
    for w in chosen {
        if !out.contains(w) {
            out.push(w.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: MemoryId, score: f32) -> Scored {
        Scored { id, score }
    }

    #[tokio::test]
    async fn a_dropped_search_task_is_cancelled_and_a_finished_one_gives_its_result() {
        let held = Arc::new(());
        let in_task = held.clone();
        let (started, wait_start) = tokio::sync::oneshot::channel();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            let _held = in_task;
            started.send(()).unwrap();
            std::future::pending::<Result<(), CoreError>>().await
        }));
        wait_start.await.unwrap();
        assert_eq!(Arc::strong_count(&held), 2);
        drop(task);
        // The runtime drops the aborted task's future (and what it holds) on its next turn.
        for _ in 0..100 {
            if Arc::strong_count(&held) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&held), 1, "the task was not cancelled");

        let done = AbortOnDropHandle::new(tokio::spawn(async { Ok::<_, CoreError>(7) }));
        assert_eq!(joined(done.await).unwrap(), 7);
        let failed = AbortOnDropHandle::new(tokio::spawn(async {
            Err::<(), _>(CoreError::Internal("no".into()))
        }));
        assert!(matches!(joined(failed.await), Err(CoreError::Internal(m)) if m == "no"));
    }

    #[tokio::test]
    async fn a_panic_in_a_search_task_fails_the_search() {
        let task = AbortOnDropHandle::new(tokio::spawn(async {
            if true {
                panic!("keyword half");
            }
            Ok::<(), CoreError>(())
        }));
        let err = joined(task.await).unwrap_err();
        assert!(
            matches!(&err, CoreError::Internal(m) if m.contains("panicked")),
            "{err:?}"
        );
    }

    #[test]
    fn request_validation_names_the_field() {
        let f = MemoryFilter::default();
        let err = |r: Result<SearchRequest, CoreError>| r.unwrap_err().field().map(str::to_owned);
        assert_eq!(
            err(SearchRequest::new(
                "  ",
                f.clone(),
                None,
                SearchMode::Hybrid,
                None
            )),
            Some("query".into())
        );
        assert_eq!(
            err(SearchRequest::new(
                "x",
                f.clone(),
                Some(0),
                SearchMode::Hybrid,
                None
            )),
            Some("k".into())
        );
        assert_eq!(
            err(SearchRequest::new(
                "x",
                f.clone(),
                Some(101),
                SearchMode::Hybrid,
                None
            )),
            Some("k".into())
        );
        assert_eq!(
            err(SearchRequest::new(
                "x",
                f.clone(),
                None,
                SearchMode::Hybrid,
                Some(f32::NAN)
            )),
            Some("min_score".into())
        );
        assert_eq!(
            SearchMode::parse("fuzzy").unwrap_err().field(),
            Some("mode")
        );
        let ok = SearchRequest::new(" hi ", f, None, SearchMode::Keyword, None).unwrap();
        assert_eq!((ok.query.as_str(), ok.k), ("hi", K_DEFAULT));
    }

    #[test]
    fn fusion_rewards_agreement_and_keeps_one_sided_hits() {
        let ids: Vec<MemoryId> = (0..4).map(|_| MemoryId::new()).collect();
        let keyword = [s(ids[0], 9.0), s(ids[1], 5.0), s(ids[2], 1.0)];
        let vector = [s(ids[1], 0.9), s(ids[3], 0.8), s(ids[0], 0.2)];
        let fused = fuse(&keyword, &vector, &[], &SearchConfig::default());
        assert_eq!(fused.len(), 4);
        // ids[1] is strong in both lists, so it wins over the keyword-only leader.
        assert_eq!(fused[0].id, ids[1]);
        let pos = |id| fused.iter().position(|s| s.id == id).unwrap();
        assert!(pos(ids[3]) < 4 && pos(ids[2]) == 3);
        // One list alone ranks as that list.
        let only = fuse(&keyword, &[], &[], &SearchConfig::default());
        assert_eq!(
            only.iter().map(|s| s.id).collect::<Vec<_>>(),
            ids[..3].to_vec()
        );
    }

    #[test]
    fn a_keyword_candidate_the_vector_list_missed_fuses_on_its_own_vector_score() {
        let ids: Vec<MemoryId> = (0..5).map(|_| MemoryId::new()).collect();
        let cfg = SearchConfig::default();
        // The same keyword scores for ids[3] and ids[4]; neither is in the vector list.
        let keyword = [s(ids[0], 4.0), s(ids[3], 3.0), s(ids[4], 3.0)];
        let vector = [s(ids[0], 0.9), s(ids[1], 0.7), s(ids[2], 0.5)];
        let score = |list: &[Scored], id| list.iter().find(|s| s.id == id).unwrap().score;
        let plain = fuse(&keyword, &vector, &[], &cfg);
        assert_eq!(score(&plain, ids[3]), score(&plain, ids[4]));
        // ids[3] is nearer than the vector list's last, as an exact search would have
        // found; ids[4] is not: it keeps the list's lowest score.
        let also = [s(ids[3], 0.8), s(ids[4], 0.1)];
        let fused = fuse(&keyword, &vector, &also, &cfg);
        assert!(score(&fused, ids[3]) > score(&plain, ids[3]));
        assert_eq!(score(&fused, ids[4]), score(&plain, ids[4]));
        // Its z-score is in the list's terms (mean 0.7, spread of the three listed).
        let sd = ((0.2f32 * 0.2 + 0.0 + 0.2 * 0.2) / 3.0).sqrt();
        let kz = fuse(&keyword, &[], &[], &cfg);
        let want = score(&kz, ids[3]) + cfg.vector_weight * (0.8 - 0.7) / sd;
        assert!((score(&fused, ids[3]) - want).abs() < 1e-4);
        // The listed memories score as before.
        for id in &ids[..3] {
            assert_eq!(score(&fused, *id), score(&plain, *id));
        }
    }
}
