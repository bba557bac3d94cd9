//! Stories of search: keyword hits before embeddings exist, filters that never leak,
//! deleted and other tenants' memories never returned, exact agreement of semantic search
//! with brute force, and re-indexing on update and purge.

use std::sync::Arc;

use engram_core::validate::{Content, Label, Metadata, Tags};
use engram_core::{
    Embedder, EmbedderSlot, EmbeddingPipeline, Memory, MemoryFilter, MemoryId, MemoryPatch,
    MemoryService, MemoryType, NewMemory, PipelineConfig, SearchConfig, SearchMode, SearchRequest,
    SearchService, Source, TenantId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::embedder::{vector_of, HashEmbedder};
use crate::{Backend, Stores};

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn note(content: &str) -> NewMemory {
    NewMemory::note(content).unwrap()
}

fn search_service(s: &Stores, embedder: Option<Arc<dyn Embedder>>) -> SearchService {
    search_service_over(s, s.search.clone(), embedder)
}

/// A search service over the store's memories but another index.
fn search_service_over(
    s: &Stores,
    index: Arc<dyn engram_core::SearchIndex>,
    embedder: Option<Arc<dyn Embedder>>,
) -> SearchService {
    search_service_with(s, index, embedder, SearchConfig::default())
}

fn search_service_with(
    s: &Stores,
    index: Arc<dyn engram_core::SearchIndex>,
    embedder: Option<Arc<dyn Embedder>>,
    config: SearchConfig,
) -> SearchService {
    let slot = EmbedderSlot::default();
    if let Some(e) = embedder {
        slot.set(e);
    }
    SearchService::new(
        s.memories.clone(),
        index,
        s.embeddings.clone(),
        slot,
        config,
    )
}

/// Two notes, the first about a deploy key, the second about lunch.
async fn key_and_lunch(svc: &MemoryService, t: &TenantId) -> (Memory, Memory) {
    let (key, _) = svc
        .remember(t, note("The deploy key rotates every Tuesday"), None)
        .await
        .unwrap();
    let (lunch, _) = svc
        .remember(t, note("Lunch is at noon"), None)
        .await
        .unwrap();
    (key, lunch)
}

fn req(query: &str, filter: MemoryFilter, k: u32, mode: SearchMode) -> SearchRequest {
    SearchRequest::new(query, filter, Some(k), mode, None).unwrap()
}

async fn embed_all(s: &Stores, embedder: Arc<impl Embedder + 'static>) {
    let p = EmbeddingPipeline::new(s.embeddings.clone(), embedder, PipelineConfig::default())
        .await
        .unwrap();
    for _ in 0..1000 {
        if p.run_batch().await.unwrap().claimed == 0 {
            return;
        }
    }
    panic!("the queue never drained");
}

async fn ids(svc: &SearchService, t: &TenantId, r: &SearchRequest) -> Vec<MemoryId> {
    svc.search(t, r)
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| h.memory.id)
        .collect()
}

pub async fn keyword_finds_a_write_before_its_embedding(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m, _) = key_and_lunch(&svc, &t).await;
    let search = search_service(&s, None);
    // Stemmed: "rotating" finds "rotates".
    for mode in [SearchMode::Keyword, SearchMode::Hybrid] {
        let r = search
            .search(
                &t,
                &req(
                    "when is the key rotating?",
                    MemoryFilter::default(),
                    10,
                    mode,
                ),
            )
            .await
            .unwrap();
        assert_eq!(r.hits.len(), 1, "{mode:?}");
        assert_eq!(r.hits[0].memory.id, m.id);
        assert_eq!(r.hits[0].rank, 1);
        assert!(r.hits[0].scores.keyword.is_some_and(|k| k > 0.0));
        assert_eq!(r.mode, SearchMode::Keyword);
        assert_eq!(r.degraded.is_some(), mode == SearchMode::Hybrid);
    }
    // Semantic search cannot run without an embedder and says so.
    let err = search
        .search(
            &t,
            &req("key", MemoryFilter::default(), 10, SearchMode::Semantic),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), engram_core::ErrorCode::Unavailable);
    // Nothing matches: no hits, no error.
    assert!(ids(
        &search,
        &t,
        &req("zebra", MemoryFilter::default(), 10, SearchMode::Keyword)
    )
    .await
    .is_empty());
}

/// A hit's read is recorded when its stored `accessed_at` is older than the resolution,
/// and only then.
pub async fn search_records_access_once_per_resolution(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m, sentinel) = key_and_lunch(&svc, &t).await;
    let with_resolution = |r: std::time::Duration| {
        let cfg = SearchConfig {
            touch_resolution: r,
            ..SearchConfig::default()
        };
        search_service_with(&s, s.search.clone(), None, cfg)
    };
    let find = req(
        "deploy key",
        MemoryFilter::default(),
        10,
        SearchMode::Keyword,
    );
    let stored = || async { crate::stories::stored(&s, &t, m.id).await.accessed_at };

    // Read within the resolution of its last access (its creation): not recorded.
    let hourly = with_resolution(std::time::Duration::from_secs(3600));
    assert_eq!(ids(&hourly, &t, &find).await, vec![m.id]);
    crate::stories::touch_and_wait(&s, &t, sentinel.id).await;
    assert_eq!(stored().await, m.accessed_at);

    // Older than the resolution: recorded.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let fine = with_resolution(std::time::Duration::from_millis(10));
    let before = engram_core::time::now();
    assert_eq!(ids(&fine, &t, &find).await, vec![m.id]);
    crate::stories::touch_and_wait(&s, &t, sentinel.id).await;
    let recorded = stored().await;
    assert!(recorded >= before, "{recorded} < {before}");

    // Zero: every time.
    let every = with_resolution(std::time::Duration::ZERO);
    let before = engram_core::time::now();
    assert_eq!(ids(&every, &t, &find).await, vec![m.id]);
    crate::stories::touch_and_wait(&s, &t, sentinel.id).await;
    assert!(stored().await >= before);
    assert_eq!(
        crate::stories::stored(&s, &t, m.id).await.version,
        1,
        "a read is not a change"
    );
}

pub async fn search_never_returns_deleted_or_foreign_memories(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let (keep, _) = svc
        .remember(&t1, note("orchid care notes"), None)
        .await
        .unwrap();
    let (gone, _) = svc
        .remember(&t1, note("orchid repotting"), None)
        .await
        .unwrap();
    let (other, _) = svc
        .remember(&t2, note("orchid watering"), None)
        .await
        .unwrap();
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    svc.forget(&t1, gone.id).await.unwrap();
    let search = search_service(&s, Some(embedder));
    for mode in [
        SearchMode::Keyword,
        SearchMode::Semantic,
        SearchMode::Hybrid,
    ] {
        let got = ids(
            &search,
            &t1,
            &req("orchid", MemoryFilter::default(), 10, mode),
        )
        .await;
        assert_eq!(got, vec![keep.id], "{mode:?}");
        let got = ids(
            &search,
            &t2,
            &req("orchid", MemoryFilter::default(), 10, mode),
        )
        .await;
        assert_eq!(got, vec![other.id], "{mode:?}");
    }
}

/// An index that lags: it still ranks `stale` (memories deleted since) above everything,
/// and holds their re-ranking fields. With `no_fields` it holds none of the re-ranker's
/// fields (search then loads every candidate). Its vector search misses `missed`, as an
/// approximate graph search can; with `blind` it cannot score memories by id either. It
/// records what each vector search said its list was for.
struct Lagging {
    inner: Arc<dyn engram_core::SearchIndex>,
    stale: Vec<MemoryId>,
    no_fields: bool,
    missed: Option<MemoryId>,
    blind: bool,
    purposes: std::sync::Mutex<Vec<engram_core::NearestFor>>,
}

impl Lagging {
    /// The store's own index, neither lagging nor missing anything.
    fn over(inner: Arc<dyn engram_core::SearchIndex>) -> Lagging {
        Lagging {
            inner,
            stale: Vec::new(),
            no_fields: false,
            missed: None,
            blind: false,
            purposes: std::sync::Mutex::default(),
        }
    }

    fn first(&self, mut hits: Vec<engram_core::Scored>) -> Vec<engram_core::Scored> {
        let top = hits.first().map_or(1.0, |h| h.score) + 1.0;
        let mut out: Vec<engram_core::Scored> = self
            .stale
            .iter()
            .map(|id| engram_core::Scored {
                id: *id,
                score: top,
            })
            .collect();
        out.append(&mut hits);
        out
    }
}

#[async_trait::async_trait]
impl engram_core::SearchIndex for Lagging {
    async fn keyword(
        &self,
        tenant: &TenantId,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
        bm25: engram_core::Bm25,
    ) -> Result<Vec<engram_core::Scored>, engram_core::StoreError> {
        let hits = self
            .inner
            .keyword(tenant, query, filter, limit, bm25)
            .await?;
        Ok(self.first(hits))
    }

    async fn nearest(
        &self,
        tenant: &TenantId,
        model: &engram_core::ModelInfo,
        vector: &[f32],
        filter: &MemoryFilter,
        want: engram_core::Nearest,
    ) -> Result<Vec<engram_core::Scored>, engram_core::StoreError> {
        self.purposes.lock().unwrap().push(want.purpose);
        let mut hits = self
            .inner
            .nearest(tenant, model, vector, filter, want)
            .await?;
        hits.retain(|h| Some(h.id) != self.missed);
        Ok(self.first(hits))
    }

    async fn similarities(
        &self,
        tenant: &TenantId,
        model: &engram_core::ModelInfo,
        vector: &[f32],
        ids: &[MemoryId],
        context_weight: f32,
    ) -> Result<Vec<engram_core::Scored>, engram_core::StoreError> {
        if self.blind {
            return Ok(Vec::new());
        }
        self.inner
            .similarities(tenant, model, vector, ids, context_weight)
            .await
    }

    async fn rerank_fields(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        speaker_key: &str,
    ) -> Result<
        std::collections::HashMap<MemoryId, engram_core::RerankFields>,
        engram_core::StoreError,
    > {
        if self.no_fields {
            return Ok(Default::default());
        }
        let mut held = self.inner.rerank_fields(tenant, ids, speaker_key).await?;
        for id in ids.iter().filter(|id| self.stale.contains(id)) {
            held.insert(*id, engram_core::RerankFields::default());
        }
        Ok(held)
    }
}

/// Search loads only the hits it returns; when the index still ranks deleted memories
/// first (and, for hybrid search, still holds their re-ranking fields), it loads further
/// down the ranking until k live ones are found, in rank order.
pub async fn a_lagging_index_loses_no_live_hit(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut live = Vec::new();
    for i in 0..30 {
        let (m, _) = svc
            .remember(&t, note(&format!("harbour crane {i}")), None)
            .await
            .unwrap();
        live.push(m.id);
    }
    let mut stale = Vec::new();
    for i in 0..12 {
        let (m, _) = svc
            .remember(&t, note(&format!("harbour crane gone {i}")), None)
            .await
            .unwrap();
        svc.forget(&t, m.id).await.unwrap();
        stale.push(m.id);
    }
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    let lagging = search_service_over(
        &s,
        Arc::new(Lagging {
            stale,
            ..Lagging::over(s.search.clone())
        }),
        Some(embedder.clone()),
    );
    let honest = search_service(&s, Some(embedder));
    for mode in [
        SearchMode::Keyword,
        SearchMode::Semantic,
        SearchMode::Hybrid,
    ] {
        for k in [1, 5, 10, 30] {
            let r = req("harbour crane", MemoryFilter::default(), k, mode);
            let got = ids(&lagging, &t, &r).await;
            assert_eq!(got.len(), k as usize, "{mode:?} k={k}");
            assert!(got.iter().all(|id| live.contains(id)), "{mode:?}");
            // Hybrid fusion normalises over the lists, stale entries included, so only
            // the single-list modes rank exactly as the honest index does.
            if mode != SearchMode::Hybrid {
                assert_eq!(got, ids(&honest, &t, &r).await, "{mode:?} k={k}");
            }
        }
    }
}

/// What an index holds for the re-ranker (session, speaker, time, length, question) is
/// what the memory says, only for the tenant's live memories, and hybrid search ranks
/// exactly as it does when it loads every candidate instead.
pub async fn held_rerank_fields_agree_with_the_memories(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut made = Vec::new();
    for i in 0..40 {
        let text = if i % 5 == 0 {
            format!("Did the river {i} flood the garden?")
        } else {
            format!("The river garden {i} {}", "and more words ".repeat(i % 7))
        };
        let mut n = note(&text);
        n.session_id = Some(Label::parse(format!("s{}", i % 4), "session_id").unwrap());
        let meta = match i % 4 {
            0 => serde_json::json!({"speaker": "Ann Lee", "role": "user"}),
            1 => serde_json::json!({"speaker": "Bo"}),
            2 if i % 8 == 2 => serde_json::json!({"speaker": 7}),
            2 => serde_json::json!({"speaker": {"name": "Ann Lee"}, "role": ["user"]}),
            _ => serde_json::json!({}),
        };
        n.metadata = Metadata::parse(meta, "metadata").unwrap();
        if i % 3 == 0 {
            n.valid_from = Some(format!("2023-0{}-08T13:56:00Z", 1 + i % 6).parse().unwrap());
        }
        made.push(svc.remember(&t, n, None).await.unwrap().0);
    }
    let gone = made.pop().unwrap();
    svc.forget(&t, gone.id).await.unwrap();
    let foreign = svc
        .remember(&tenant("t2"), note("The river garden elsewhere"), None)
        .await
        .unwrap()
        .0;
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    let held = search_service(&s, Some(embedder.clone()));
    let unheld = search_service_over(
        &s,
        Arc::new(Lagging {
            no_fields: true,
            ..Lagging::over(s.search.clone())
        }),
        Some(embedder),
    );
    let ranking = |r: engram_core::SearchResult| {
        r.hits
            .into_iter()
            .map(|h| (h.memory.id, h.score, h.rank))
            .collect::<Vec<_>>()
    };
    for q in ["Did Ann see the river in May 2023?", "garden Bo", "flood"] {
        for k in [3, 10, 40] {
            let r = req(q, MemoryFilter::default(), k, SearchMode::Hybrid);
            let a = held.search(&t, &r).await.unwrap();
            assert_eq!(a.mode, SearchMode::Hybrid);
            assert!(!a.hits.is_empty(), "{q}");
            let b = unheld.search(&t, &r).await.unwrap();
            assert_eq!(ranking(a), ranking(b), "{q} k={k}");
        }
    }
    // The search above brought the indexes up to date.
    let mut ids: Vec<MemoryId> = made.iter().map(|m| m.id).collect();
    ids.extend([gone.id, foreign.id]);
    for key in ["speaker", "role"] {
        let got = s.search.rerank_fields(&t, &ids, key).await.unwrap();
        assert!(!got.contains_key(&gone.id) && !got.contains_key(&foreign.id));
        for m in &made {
            if let Some(f) = got.get(&m.id) {
                assert_eq!(*f, engram_core::RerankFields::of(m, key), "{key}");
            }
        }
    }
}

pub async fn updates_and_purges_reach_the_indexes(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m, _) = svc.remember(&t, note("alpha bravo"), None).await.unwrap();
    let search = search_service(&s, None);
    let kw = |q: &str| req(q, MemoryFilter::default(), 10, SearchMode::Keyword);
    assert_eq!(ids(&search, &t, &kw("alpha")).await, vec![m.id]);
    let patch = MemoryPatch {
        content: Some(Content::parse("charlie delta".into(), "content").unwrap()),
        title: Some(Some(
            engram_core::validate::Title::parse("echo".into(), "title").unwrap(),
        )),
        tags: Some(Tags::parse(&["foxtrot"], "tags").unwrap()),
        ..Default::default()
    };
    svc.update(&t, m.id, patch).await.unwrap();
    assert!(ids(&search, &t, &kw("alpha")).await.is_empty());
    for word in ["charlie", "echo", "foxtrot"] {
        assert_eq!(ids(&search, &t, &kw(word)).await, vec![m.id], "{word}");
    }
    let mut u = note("golf hotel");
    u.user_id = Some(Label::parse("u1".into(), "user_id").unwrap());
    svc.remember(&t, u, None).await.unwrap();
    s.memories.purge_user(&t, "u1").await.unwrap();
    assert!(ids(&search, &t, &kw("golf")).await.is_empty());
    s.memories.purge_tenant(&t).await.unwrap();
    assert!(ids(&search, &t, &kw("charlie")).await.is_empty());
}

const WORDS: &[&str] = &[
    "garden", "invoice", "python", "river", "meeting", "deploy", "coffee", "budget", "travel",
    "review",
];

async fn varied_corpus(svc: &MemoryService, t: &TenantId, n: usize) -> Vec<Memory> {
    let mut rng = StdRng::seed_from_u64(7);
    let types = [MemoryType::Note, MemoryType::Fact, MemoryType::Decision];
    let mut out = Vec::new();
    for i in 0..n {
        let words: Vec<&str> = (0..3)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let mut new = note(&format!("{} number {i}", words.join(" ")));
        new.memory_type = types[i % 3];
        new.source = [Source::Manual, Source::Chat][i % 2];
        let l = |s: String| Some(Label::parse(s, "label").unwrap());
        new.user_id = l(format!("user{}", i % 4));
        new.agent_id = (i % 5 != 0).then(|| Label::parse("agent".into(), "a").unwrap());
        new.project = l(format!("p{}", i % 2));
        new.domain = (i % 3 == 0).then(|| Label::parse("work".into(), "d").unwrap());
        new.session_id = l(format!("s{}", i % 7));
        let tags: Vec<&str> = ["red", "green"]
            .into_iter()
            .enumerate()
            .filter(|(k, _)| i % (k + 2) == 0)
            .map(|(_, t)| t)
            .collect();
        new.tags = Tags::parse(&tags, "tags").unwrap();
        new.metadata = Metadata::parse(serde_json::json!({"rem": i % 3}), "metadata").unwrap();
        out.push(svc.remember(t, new, None).await.unwrap().0);
    }
    out
}

fn random_filter(rng: &mut StdRng, all: &[Memory]) -> MemoryFilter {
    let mut f = MemoryFilter::default();
    let pick = |rng: &mut StdRng| rng.random_bool(0.3);
    if pick(rng) {
        f.memory_types = vec![
            [MemoryType::Note, MemoryType::Fact, MemoryType::Decision][rng.random_range(0..3)],
        ];
        if pick(rng) {
            f.memory_types.push(MemoryType::Note);
        }
    }
    if pick(rng) {
        f.source = Some([Source::Manual, Source::Chat][rng.random_range(0..2)]);
    }
    if pick(rng) {
        f.user_id = Some(format!("user{}", rng.random_range(0..5)));
    }
    if pick(rng) {
        f.agent_id = Some("agent".into());
    }
    if pick(rng) {
        f.project = Some(format!("p{}", rng.random_range(0..2)));
    }
    if pick(rng) {
        f.domain = Some("work".into());
    }
    if pick(rng) {
        f.session_id = Some(format!("s{}", rng.random_range(0..8)));
    }
    if pick(rng) {
        f.tags = vec![["red", "green"][rng.random_range(0..2)].into()];
    }
    if pick(rng) {
        f.metadata = vec![("rem".into(), serde_json::json!(rng.random_range(0..3)))];
    }
    if pick(rng) {
        f.created_after = Some(all[rng.random_range(0..all.len())].created_at);
    }
    if pick(rng) {
        f.created_before = Some(all[rng.random_range(0..all.len())].created_at);
    }
    f
}

/// Random filters in every mode: every hit passes the filter, and semantic search returns
/// exactly the brute-force top k among the memories that pass it.
pub async fn search_filters_never_leak(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut all = varied_corpus(&svc, &t, 120).await;
    varied_corpus(&svc, &tenant("t2"), 30).await;
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    for m in all.iter_mut().step_by(6) {
        svc.forget(&t, m.id).await.unwrap();
        m.deleted_at = Some(engram_core::time::now());
    }
    let search = search_service(&s, Some(embedder));
    let mut rng = StdRng::seed_from_u64(42);
    for case in 0..150 {
        let filter = random_filter(&mut rng, &all);
        let query = format!(
            "{} {}",
            WORDS[rng.random_range(0..WORDS.len())],
            WORDS[rng.random_range(0..WORDS.len())]
        );
        let k = rng.random_range(1..=12);
        for mode in [
            SearchMode::Keyword,
            SearchMode::Semantic,
            SearchMode::Hybrid,
        ] {
            let r = search
                .search(&t, &req(&query, filter.clone(), k, mode))
                .await
                .unwrap();
            assert!(r.hits.len() <= k as usize);
            for h in &r.hits {
                assert!(
                    filter.matches(&h.memory) && h.memory.tenant == t,
                    "case {case} {mode:?}: {:?} leaked through {filter:?}",
                    h.memory.id
                );
            }
            if mode == SearchMode::Semantic {
                // The brute-force top k, allowing for the index storing vectors at
                // reduced precision: scores within TOLERANCE of each other may swap.
                const TOLERANCE: f32 = 0.01;
                let q = vector_of(&query);
                let exact: std::collections::HashMap<MemoryId, f32> = all
                    .iter()
                    .filter(|m| filter.matches(m))
                    .map(|m| (m.id, cosine(&q, &vector_of(&m.content))))
                    .collect();
                let mut want: Vec<f32> = exact.values().copied().collect();
                want.sort_by(|a, b| b.total_cmp(a));
                let got: Vec<f32> = r.hits.iter().map(|h| exact[&h.memory.id]).collect();
                assert_eq!(got.len(), want.len().min(k as usize), "case {case}");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= TOLERANCE,
                        "case {case}: hit {i} scores {g}, the exact {i}th {w}, under {filter:?}"
                    );
                }
            }
            if mode == SearchMode::Keyword {
                // Every live memory containing a query word and passing the filter is a
                // candidate; with k large enough they are all found.
                let words: Vec<&str> = query.split(' ').collect();
                let n = all
                    .iter()
                    .filter(|m| filter.matches(m) && words.iter().any(|w| m.content.contains(w)))
                    .count();
                assert_eq!(r.hits.len(), n.min(k as usize), "case {case}: {query}");
            }
        }
    }
}

/// Embeds every pending memory, then every queued session's context windows; returns
/// how many texts the embedder embedded.
async fn embed_with_contexts(s: &Stores, embedder: Arc<HashEmbedder>) -> usize {
    let before = embedder.embedded.load(std::sync::atomic::Ordering::SeqCst);
    let p = EmbeddingPipeline::new(
        s.embeddings.clone(),
        embedder.clone(),
        PipelineConfig::default(),
    )
    .await
    .unwrap();
    while p.run_batch().await.unwrap().claimed > 0 {}
    while p.run_context_batch().await.unwrap() > 0 {}
    embedder.embedded.load(std::sync::atomic::Ordering::SeqCst) - before
}

/// Semantic search agrees with brute force over the memories' own vectors mixed with
/// their context vectors, computed here from the session's live turns.
async fn assert_mixed_scores(
    search: &SearchService,
    t: &TenantId,
    live: &[Memory],
    query: &str,
    context_weight: f32,
) {
    let session: Vec<&Memory> = live
        .iter()
        .filter(|m| m.scope.session_id.is_some())
        .collect();
    let turns: Vec<engram_core::SessionTurn> = session
        .iter()
        .map(|m| engram_core::SessionTurn {
            memory_id: m.id,
            user_id: m.scope.user_id.clone(),
            content: m.content.clone(),
            context_hash: None,
        })
        .collect();
    let windows = engram_core::pipeline::windows(&turns, PipelineConfig::default().context_turns);
    let window_of: std::collections::HashMap<MemoryId, &String> =
        session.iter().map(|m| m.id).zip(&windows).collect();
    let q = vector_of(query);
    let mut want: Vec<(MemoryId, f32)> = live
        .iter()
        .map(|m| {
            let turn = cosine(&q, &vector_of(&m.content));
            let score = match window_of.get(&m.id) {
                Some(w) if **w != m.content => {
                    (1.0 - context_weight) * turn + context_weight * cosine(&q, &vector_of(w))
                }
                _ => turn,
            };
            (m.id, score)
        })
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let r = search
        .search(
            t,
            &req(query, MemoryFilter::default(), 5, SearchMode::Semantic),
        )
        .await
        .unwrap();
    assert_eq!(r.hits.len(), want.len().min(5));
    for (i, (h, w)) in r.hits.iter().zip(&want).enumerate() {
        let exact = want.iter().find(|x| x.0 == h.memory.id).unwrap().1;
        assert!(
            (exact - w.1).abs() <= 0.01 && (h.score - w.1).abs() <= 0.01,
            "hit {i}: {} scores {} (exact {exact}), want {}",
            h.memory.content,
            h.score,
            w.1
        );
    }
}

/// A session's memories get context vectors over their windows; a new turn re-embeds
/// only the windows it changed; a deleted turn leaves its neighbours' windows; a purged
/// tenant leaves no session queued.
pub async fn context_vectors_follow_their_sessions(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let turn = |i: usize| {
        let mut n = note(&format!(
            "turn {i} of the talk about {}",
            WORDS[i % WORDS.len()]
        ));
        n.session_id = Some(Label::parse("s1".into(), "session_id").unwrap());
        n
    };
    let mut live = Vec::new();
    for i in 0..5 {
        live.push(svc.remember(&t, turn(i), None).await.unwrap().0);
    }
    // Outside any session: no context vector.
    live.push(svc.remember(&t, note("a lone note"), None).await.unwrap().0);
    let mut other = note("the other tenant's turn");
    other.session_id = Some(Label::parse("s9".into(), "session_id").unwrap());
    svc.remember(&tenant("t2"), other.clone(), None)
        .await
        .unwrap();
    svc.remember(&tenant("t2"), other, None).await.unwrap();
    let embedder = Arc::new(HashEmbedder::default());
    // 6 + 2 memories (the two of t2 share one text), 5 windows of s1, 1 of s9 (its two
    // turns' windows are the same text).
    assert_eq!(embed_with_contexts(&s, embedder.clone()).await, 7 + 5 + 1);
    let search = search_service(&s, Some(embedder.clone()));
    let w = SearchConfig::default().context_weight;
    for q in [
        "turn 2 of the talk",
        "coffee",
        "a lone note",
        "river garden",
    ] {
        assert_mixed_scores(&search, &t, &live, q, w).await;
    }

    // A sixth turn: its window and the two before it change, no others.
    live.insert(5, svc.remember(&t, turn(5), None).await.unwrap().0);
    assert_eq!(embed_with_contexts(&s, embedder.clone()).await, 1 + 3);
    assert_mixed_scores(&search, &t, &live, "turn 4 of the talk", w).await;

    // A deleted turn is never returned and leaves every window it was in.
    let gone = live.remove(2);
    svc.forget(&t, gone.id).await.unwrap();
    assert_eq!(embed_with_contexts(&s, embedder.clone()).await, 4);
    assert_mixed_scores(&search, &t, &live, &gone.content, w).await;

    // A turn taken out of its session loses its context vector: its score is its own
    // vector's again, and the session's windows close over the gap.
    let moved = live[1].id;
    let patch = MemoryPatch {
        session_id: Some(None),
        ..Default::default()
    };
    live[1] = svc.update(&t, moved, patch).await.unwrap();
    assert!(live[1].scope.session_id.is_none());
    embed_with_contexts(&s, embedder.clone()).await;
    let own_text = live[1].content.clone();
    for q in ["turn 1 of the talk", own_text.as_str()] {
        assert_mixed_scores(&search, &t, &live, q, w).await;
    }

    // Purging a tenant leaves none of its sessions queued.
    let late = turn(7);
    svc.remember(&tenant("t2"), late, None).await.unwrap();
    s.memories.purge_tenant(&tenant("t2")).await.unwrap();
    let lease = engram_core::time::now() + chrono::Duration::minutes(1);
    let queued = s.embeddings.claim_contexts(100, lease).await.unwrap();
    assert!(
        queued.iter().all(|j| j.tenant != tenant("t2")),
        "{queued:?}"
    );
}

/// Hybrid search embeds the query without the names of the speakers it names among the
/// keyword candidates. Its vector half starts before those are known, on a guess from
/// speakers met earlier; whether the guess is right (a speaker met before, or nobody
/// named) or wrong (a first meeting; a speaker met before but filtered out), every hit's
/// vector score is the one of the right text, and the results do not depend on the guess.
pub async fn hybrid_search_embeds_the_query_without_the_speakers_it_names(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let turns = [
        ("Ann Lee", "u1", "Ann Lee: I planted tomatoes in the garden"),
        ("Ann Lee", "u1", "Ann Lee: the garden fence is broken"),
        ("Bo", "u1", "Bo: the garden needs water every morning"),
        ("Bo", "u2", "Bo: I painted the garden shed green"),
        ("Cy", "u2", "Cy: tomatoes grow best in full sun"),
    ];
    let mut contents = std::collections::HashMap::new();
    for (speaker, user, text) in turns {
        let mut n = note(text);
        n.user_id = Some(Label::parse(user.into(), "user_id").unwrap());
        n.metadata =
            Metadata::parse(serde_json::json!({ "speaker": speaker }), "metadata").unwrap();
        let (m, _) = svc.remember(&t, n, None).await.unwrap();
        contents.insert(m.id, m.content.clone());
    }
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    let search = search_service(&s, Some(embedder));
    let user = |u: &str| MemoryFilter {
        user_id: Some(u.into()),
        ..Default::default()
    };
    let cases = [
        // First meeting of Ann Lee: the guess (nothing to strip) is wrong.
        (
            "what did Ann plant in the garden?",
            MemoryFilter::default(),
            "what did plant in the garden?",
        ),
        // Met before: the guess is right.
        (
            "what did Ann plant in the garden?",
            MemoryFilter::default(),
            "what did plant in the garden?",
        ),
        (
            "Ann's fence and Bo's shed",
            MemoryFilter::default(),
            "fence and shed",
        ),
        // Nobody named.
        (
            "where do tomatoes grow?",
            MemoryFilter::default(),
            "where do tomatoes grow?",
        ),
        // Ann Lee was met, but none of her turns pass this filter: the name stays.
        (
            "what did Ann plant in the garden?",
            user("u2"),
            "what did Ann plant in the garden?",
        ),
        // The name alone: nothing would be left, so nothing is stripped.
        ("Ann", MemoryFilter::default(), "Ann"),
    ];
    let mut first: std::collections::HashMap<String, Vec<(MemoryId, f32)>> =
        std::collections::HashMap::new();
    for (i, (query, filter, embedded)) in cases.iter().enumerate() {
        let r = search
            .search(&t, &req(query, filter.clone(), 10, SearchMode::Hybrid))
            .await
            .unwrap();
        assert_eq!(r.mode, SearchMode::Hybrid, "case {i}");
        assert!(r.degraded.is_none(), "case {i}");
        assert!(!r.hits.is_empty(), "case {i}");
        let q = vector_of(embedded);
        for h in &r.hits {
            assert!(filter.matches(&h.memory), "case {i}");
            let want = cosine(&q, &vector_of(&contents[&h.memory.id]));
            let got = h.scores.vector.expect("every memory has a vector");
            assert!(
                (got - want).abs() <= 0.01,
                "case {i} ({query}): {} has vector score {got}, want {want} for {embedded:?}",
                h.memory.content
            );
        }
        let ranked: Vec<(MemoryId, f32)> = r.hits.iter().map(|h| (h.memory.id, h.score)).collect();
        let key = format!("{query}|{:?}", filter.user_id);
        if let Some(before) = first.get(&key) {
            assert_eq!(&ranked, before, "case {i}: the guess changed the results");
        }
        first.insert(key, ranked);
    }
}

/// Semantic search over a user's memories (or a tenant's), with and without another
/// filter beside the user: a memory moved to another user is found under the new one
/// only; a memory whose content changed is not a semantic hit until its new content is
/// embedded, and then scores by the new content; a deleted memory is gone.
pub async fn semantic_search_follows_users_contents_and_deletes(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut mine = std::collections::HashMap::new();
    for (user, text) in [
        (Some("u1"), "apple pie recipe"),
        (Some("u1"), "banana bread"),
        (Some("u2"), "cherry tart"),
        (None, "date loaf"),
    ] {
        let mut n = note(text);
        n.user_id = user.map(|u| Label::parse(u.into(), "user_id").unwrap());
        let (m, _) = svc.remember(&t, n, None).await.unwrap();
        mine.insert(text, m.id);
    }
    // Another tenant's memory of the same text is never a hit.
    let other = tenant("t2");
    let mut n = note("apple pie recipe");
    n.user_id = Some(Label::parse("u1".into(), "user_id").unwrap());
    svc.remember(&other, n, None).await.unwrap();
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    let search = search_service(&s, Some(embedder.clone()));
    // (user filter, with a second condition or not) → the hits for `query`.
    let hits = |query: &'static str, user: Option<&'static str>, typed: bool| {
        let search = &search;
        let t = &t;
        async move {
            let filter = MemoryFilter {
                user_id: user.map(str::to_owned),
                memory_types: if typed {
                    vec![MemoryType::Note]
                } else {
                    vec![]
                },
                ..Default::default()
            };
            let r = search
                .search(t, &req(query, filter, 10, SearchMode::Semantic))
                .await
                .unwrap();
            r.hits
                .into_iter()
                .map(|h| (h.memory.id, h.score))
                .collect::<Vec<_>>()
        }
    };
    let top = |v: &[(MemoryId, f32)]| v.first().map(|(id, score)| (*id, (*score * 100.0).round()));
    for typed in [false, true] {
        let u1 = hits("apple pie recipe", Some("u1"), typed).await;
        assert_eq!(u1.len(), 2, "typed {typed}");
        assert_eq!(
            top(&u1),
            Some((mine["apple pie recipe"], 100.0)),
            "typed {typed}"
        );
        let all = hits("date loaf", None, typed).await;
        assert_eq!(all.len(), 4, "typed {typed}");
        assert_eq!(top(&all), Some((mine["date loaf"], 100.0)), "typed {typed}");
    }
    // Moved to u2.
    let id = mine["apple pie recipe"];
    let to_u2 = MemoryPatch {
        user_id: Some(Some(Label::parse("u2".into(), "user_id").unwrap())),
        ..Default::default()
    };
    svc.update(&t, id, to_u2).await.unwrap();
    for typed in [false, true] {
        let u1 = hits("apple pie recipe", Some("u1"), typed).await;
        assert!(
            u1.iter().all(|(m, _)| *m != id),
            "typed {typed}: still under u1"
        );
        assert_eq!(u1.len(), 1, "typed {typed}");
        let u2 = hits("apple pie recipe", Some("u2"), typed).await;
        assert_eq!(top(&u2), Some((id, 100.0)), "typed {typed}");
    }
    // New content: no semantic hit until embedded, then scored by the new content.
    let patch = MemoryPatch {
        content: Some(Content::parse("apricot jam".into(), "content").unwrap()),
        ..Default::default()
    };
    svc.update(&t, id, patch).await.unwrap();
    for typed in [false, true] {
        let u2 = hits("apple pie recipe", Some("u2"), typed).await;
        assert!(
            u2.iter().all(|(m, _)| *m != id),
            "typed {typed}: scored by old content"
        );
    }
    embed_all(&s, embedder).await;
    for typed in [false, true] {
        let u2 = hits("apricot jam", Some("u2"), typed).await;
        assert_eq!(top(&u2), Some((id, 100.0)), "typed {typed}");
        assert_eq!(u2.len(), 2, "typed {typed}");
    }
    // Deleted.
    let bread = mine["banana bread"];
    svc.forget(&t, bread).await.unwrap();
    for typed in [false, true] {
        assert!(
            hits("banana bread", Some("u1"), typed).await.is_empty(),
            "typed {typed}"
        );
        let all = hits("banana bread", None, typed).await;
        assert!(all.iter().all(|(m, _)| *m != bread), "typed {typed}");
        assert_eq!(all.len(), 3, "typed {typed}");
    }
}

/// `SearchIndex::similarities` scores the memories it is given as `nearest` scores them
/// (context vectors mixed in), and only the tenant's live ones with vectors of the model:
/// hybrid search fuses them as if the vector retriever had found them.
pub async fn similarities_score_as_nearest_does(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut live = Vec::new();
    for i in 0..24 {
        let mut n = note(&format!(
            "the lighthouse keeper {i} logs the {} tide",
            i % 5
        ));
        if i % 2 == 0 {
            n.session_id = Some(Label::parse(format!("s{}", i % 3), "session_id").unwrap());
        }
        live.push(svc.remember(&t, n, None).await.unwrap().0.id);
    }
    let gone = live.pop().unwrap();
    let foreign = svc
        .remember(
            &tenant("t2"),
            note("the lighthouse keeper logs the tide"),
            None,
        )
        .await
        .unwrap()
        .0
        .id;
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    svc.forget(&t, gone).await.unwrap();
    // Written after the embedding ran: no vector yet.
    let unembedded = svc
        .remember(&t, note("the lighthouse keeper sleeps"), None)
        .await
        .unwrap()
        .0
        .id;
    let model = embedder.model();
    let query = embedder.embed_query("keeper logs the tide").await.unwrap();
    for w in [0.0, 0.5] {
        let near = s
            .search
            .nearest(
                &t,
                &model,
                &query,
                &MemoryFilter::default(),
                engram_core::Nearest::answer(100, w),
            )
            .await
            .unwrap();
        assert_eq!(near.len(), live.len(), "w {w}");
        let mut asked = live.clone();
        asked.extend([gone, foreign, unembedded]);
        let got = s
            .search
            .similarities(&t, &model, &query, &asked, w)
            .await
            .unwrap();
        let mut ids: Vec<MemoryId> = got.iter().map(|x| x.id).collect();
        ids.sort_unstable();
        let mut want = live.clone();
        want.sort_unstable();
        assert_eq!(
            ids, want,
            "w {w}: the tenant's live, embedded memories, once each"
        );
        for x in &got {
            let n = near.iter().find(|n| n.id == x.id).unwrap();
            // Within the rounding of quantised vectors (a graph may hold i8 vectors and
            // score its best few again at full precision).
            assert!(
                (x.score - n.score).abs() < 0.02,
                "w {w}: {} vs {}",
                x.score,
                n.score
            );
        }
        // Another model's vectors are none of these.
        let other = engram_core::ModelInfo {
            revision: "other".into(),
            ..model.clone()
        };
        let none = s
            .search
            .similarities(&t, &other, &query, &asked, w)
            .await
            .unwrap();
        assert!(none.is_empty(), "w {w}: {none:?}");
    }
}

/// A memory best on both keywords and meaning stays first in a hybrid search whose vector
/// search missed it: it is fused on its own vector score, not as the least near.
pub async fn hybrid_search_fuses_what_its_vector_search_missed(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let best = svc
        .remember(&t, note("the amber falcon nests in the old quarry"), None)
        .await
        .unwrap()
        .0
        .id;
    for text in [
        "the amber falcon nests in the old barn",
        "the amber falcon hunts in the old quarry",
        "the grey falcon nests in the old quarry",
        "the amber heron nests in the old quarry",
        "a falcon was seen near the quarry",
        "the old barn needs a new roof",
        "lunch is at noon on fridays",
        "the quarry closes at dusk",
    ] {
        svc.remember(&t, note(text), None).await.unwrap();
    }
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    // The test embedder's vectors are of the whole text: the query is the memory's text,
    // so the memory is also the nearest.
    let r = req(
        "the amber falcon nests in the old quarry",
        MemoryFilter::default(),
        5,
        SearchMode::Hybrid,
    );
    let over = |blind| {
        let index = Arc::new(Lagging {
            missed: Some(best),
            blind,
            ..Lagging::over(s.search.clone())
        });
        search_service_over(&s, index, Some(embedder.clone()))
    };
    let score_of = |hits: &[engram_core::SearchHit]| {
        hits.iter().find(|h| h.memory.id == best).map(|h| h.score)
    };
    let whole = search_service(&s, Some(embedder.clone()))
        .search(&t, &r)
        .await
        .unwrap();
    assert_eq!(whole.hits[0].memory.id, best);
    let missed = over(false).search(&t, &r).await.unwrap();
    assert_eq!(missed.mode, SearchMode::Hybrid);
    assert_eq!(missed.hits[0].memory.id, best, "{:?}", missed.hits);
    // Scored as the least near instead, it fuses lower: the check above is not idle.
    let blind = over(true).search(&t, &r).await.unwrap();
    let filled = score_of(&missed.hits).unwrap();
    assert!(
        score_of(&blind.hits).is_none_or(|s| s < filled),
        "{:?}",
        blind.hits
    );
}

/// A hybrid search tells the index its vector list is one half of a fusion, a semantic
/// search that its list is the answer: a store may walk its graph less widely for the first.
pub async fn each_mode_says_what_its_vector_list_is_for(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    for text in ["the amber falcon nests in the quarry", "lunch is at noon"] {
        svc.remember(&t, note(text), None).await.unwrap();
    }
    let embedder = Arc::new(HashEmbedder::default());
    embed_all(&s, embedder.clone()).await;
    let index = Arc::new(Lagging::over(s.search.clone()));
    let search = search_service_over(&s, index.clone(), Some(embedder));
    for (mode, purpose) in [
        (SearchMode::Hybrid, engram_core::NearestFor::Fusion),
        (SearchMode::Semantic, engram_core::NearestFor::Answer),
    ] {
        let r = req("amber falcon", MemoryFilter::default(), 5, mode);
        let found = search.search(&t, &r).await.unwrap();
        assert_eq!(found.mode, mode);
        assert!(!found.hits.is_empty(), "{mode:?}");
        let asked = std::mem::take(&mut *index.purposes.lock().unwrap());
        assert!(
            !asked.is_empty() && asked.iter().all(|p| *p == purpose),
            "{mode:?}: {asked:?}"
        );
    }
}

/// Vectors of 1,536 dimensions and a user id of 256 multi-byte characters are stored and
/// found like any others (an index entry that could not hold them must not refuse them).
pub async fn wide_vectors_and_long_scopes_are_searchable(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let long_user = "é".repeat(engram_core::validate::SCOPE_MAX_CHARS);
    let mut ids = std::collections::HashMap::new();
    for (user, text) in [
        (long_user.as_str(), "apple pie recipe"),
        (long_user.as_str(), "banana bread"),
        ("u2", "cherry tart"),
    ] {
        let mut n = note(text);
        n.user_id = Some(Label::parse(user.to_owned(), "user_id").unwrap());
        let (m, _) = svc.remember(&t, n, None).await.unwrap();
        ids.insert(text, m.id);
    }
    let embedder = Arc::new(crate::embedder::WideEmbedder);
    embed_all(&s, embedder.clone()).await;
    for id in ids.values() {
        let m = s.memories.get(&t, *id).await.unwrap().unwrap();
        assert_eq!(m.embedding_status, engram_core::EmbeddingStatus::Completed);
    }
    let search = search_service(&s, Some(embedder));
    for (user, query, n) in [
        (Some(long_user.as_str()), "banana bread", 2),
        (Some("u2"), "cherry tart", 1),
        (None, "apple pie recipe", 3),
    ] {
        let filter = MemoryFilter {
            user_id: user.map(str::to_owned),
            ..Default::default()
        };
        let r = search
            .search(&t, &req(query, filter, 10, SearchMode::Semantic))
            .await
            .unwrap();
        assert_eq!(r.hits.len(), n, "{query}");
        assert_eq!(r.hits[0].memory.id, ids[query], "{query}");
        assert!(
            (r.hits[0].score - 1.0).abs() < 0.01,
            "{query}: {}",
            r.hits[0].score
        );
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// A model switch reaches every search at once, even one whose query vector was made
/// before the switch (the search service keeps query vectors): an embedder of the old
/// model gets no vector hits and is told why, one of the new model gets them.
pub async fn a_model_switch_reaches_searches_of_known_queries(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    for text in [
        "The deploy key rotates every Tuesday",
        "Lunch is at noon",
        "Backups run nightly",
    ] {
        svc.remember(&t, note(text), None).await.unwrap();
    }
    let old = Arc::new(HashEmbedder::default());
    embed_all(&s, old.clone()).await;
    let search = search_service(&s, Some(old.clone()));
    let query = "when does the deploy key rotate";
    for mode in [SearchMode::Semantic, SearchMode::Hybrid] {
        let r = search
            .search(&t, &req(query, MemoryFilter::default(), 10, mode))
            .await
            .unwrap();
        assert!(r.degraded.is_none(), "{mode:?}: {:?}", r.degraded);
        assert_eq!(r.mode, mode);
        assert!(r.hits.iter().any(|h| h.scores.vector.is_some()), "{mode:?}");
    }
    let new = Arc::new(HashEmbedder {
        revision: 1,
        ..Default::default()
    });
    let report = engram_core::reembed(s.embeddings.clone(), new.clone(), 4, |_| {})
        .await
        .unwrap();
    assert_eq!(report.embedded, 3);
    assert_eq!(
        s.embeddings.active_model().await.unwrap(),
        Some(new.model())
    );
    // The old model's embedder, with the query's vector already made.
    let r = search
        .search(
            &t,
            &req(query, MemoryFilter::default(), 10, SearchMode::Hybrid),
        )
        .await
        .unwrap();
    assert_eq!(r.mode, SearchMode::Keyword);
    let why = r.degraded.expect("a search of the old model is degraded");
    assert!(why.contains("engram reembed"), "{why}");
    assert!(r.hits.iter().all(|h| h.scores.vector.is_none()));
    let err = search
        .search(
            &t,
            &req(query, MemoryFilter::default(), 10, SearchMode::Semantic),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), engram_core::ErrorCode::Unavailable);
    // The new model's embedder finds by vector again.
    let fresh = search_service(&s, Some(new));
    let r = fresh
        .search(
            &t,
            &req(query, MemoryFilter::default(), 10, SearchMode::Semantic),
        )
        .await
        .unwrap();
    assert!(r.degraded.is_none());
    assert_eq!(r.hits.len(), 3);
}
