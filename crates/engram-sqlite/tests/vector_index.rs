//! The in-process vector index as derived state: rebuilt when its files are removed or
//! damaged, identical after a restart, and in step with deletes and updates.

use std::collections::HashSet;

use engram_core::validate::Label;
use engram_core::{
    EmbeddingStore, MemoryFilter, MemoryId, MemoryService, ModelInfo, Nearest, NearestFor,
    NewMemory, SearchIndex, TenantId,
};
use engram_sqlite::{SqliteConfig, SqliteStore, VectorQuantization};

const DIM: usize = 16;

fn model() -> ModelInfo {
    ModelInfo {
        id: "test/lcg".into(),
        revision: "1".into(),
        dim: DIM,
    }
}

/// A deterministic pseudo-random vector per seed.
fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..DIM)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn cfg(dir: &std::path::Path) -> SqliteConfig {
    SqliteConfig {
        // Force the graph path, so the saved graph is what answers.
        exact_search_max: 0,
        ..SqliteConfig::new(dir)
    }
}

/// Stores `n` memories with vectors through the pipeline's claim/complete path.
async fn fill(store: &SqliteStore, t: &TenantId, n: usize) -> Vec<MemoryId> {
    let vectors = (0..n as u64).map(vector).collect();
    store_vectors(store, t, &model(), vectors, |_| None).await
}

/// Stores one memory per vector of `model`, the i-th with `user_id` `user(i)`, through the
/// pipeline's claim/complete path.
async fn store_vectors(
    store: &SqliteStore,
    t: &TenantId,
    model: &ModelInfo,
    vectors: Vec<Vec<f32>>,
    user: impl Fn(usize) -> Option<&'static str>,
) -> Vec<MemoryId> {
    let svc = MemoryService::new(std::sync::Arc::new(store.clone()));
    let mut ids = Vec::new();
    for i in 0..vectors.len() {
        let mut new = NewMemory::note(&format!("memory {i}")).unwrap();
        new.user_id = user(i).map(|u| Label::parse(u.into(), "user_id").unwrap());
        let (m, _) = svc.remember(t, new, None).await.unwrap();
        ids.push(m.id);
    }
    store.register_model(model).await.unwrap();
    let lease = engram_core::time::now() + chrono::Duration::minutes(5);
    let mut stored = 0;
    while stored < ids.len() {
        let jobs = store.claim_embeddings(500, lease).await.unwrap();
        assert!(!jobs.is_empty(), "{stored} of {} embedded", ids.len());
        let results = jobs
            .into_iter()
            .map(|j| {
                let i = ids.iter().position(|id| *id == j.memory_id).unwrap();
                (j, vec![vectors[i].clone()])
            })
            .collect::<Vec<_>>();
        stored += results.len();
        let done = store
            .complete_embeddings(model, results, engram_core::time::now())
            .await
            .unwrap();
        assert!(done.iter().all(|d| *d));
    }
    ids
}

/// The exact top `k` for the query vector of seed `q`, by brute-force cosine similarity.
fn exact_top(ids: &[MemoryId], q: u64, k: usize) -> Vec<MemoryId> {
    let query = vector(q);
    let cos = |v: &[f32]| {
        let dot: f32 = v.iter().zip(&query).map(|(a, b)| a * b).sum();
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        dot / (norm(v) * norm(&query))
    };
    let mut scored: Vec<(f32, MemoryId)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (cos(&vector(i as u64)), *id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

async fn top(store: &SqliteStore, t: &TenantId, q: u64) -> Vec<(MemoryId, f32)> {
    top_for(store, t, q, Nearest::answer(10, 0.7)).await
}

/// [`top`] for the list `want` asks for.
async fn top_for(store: &SqliteStore, t: &TenantId, q: u64, want: Nearest) -> Vec<(MemoryId, f32)> {
    store
        .nearest(t, &model(), &vector(q), &MemoryFilter::default(), want)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.score))
        .collect()
}

/// [`top`] for the query vectors of seeds 0 to 19.
async fn tops(store: &SqliteStore, t: &TenantId) -> Vec<Vec<(MemoryId, f32)>> {
    let mut all = Vec::new();
    for q in 0..20 {
        all.push(top(store, t, q).await);
    }
    all
}

/// The graph kept in i8, with the best `rescore` keys of a search scored again from f32.
fn i8_cfg(dir: &std::path::Path, rescore: usize) -> SqliteConfig {
    SqliteConfig {
        vector_quantization: VectorQuantization::I8,
        vector_rescore: rescore,
        ..cfg(dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_survives_restart_and_is_rebuilt_when_removed_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&cfg(dir.path())).unwrap();
    let ids = fill(&store, &t, 300).await;
    let before = tops(&store, &t).await;
    assert_eq!(store.indexed_memories(), 300);
    // The query vector of memory i is its own vector: it ranks first.
    assert_eq!(before[3][0].0, ids[3]);
    store.close();
    let graph = dir.path().join("index/vectors.usearch");
    assert!(graph.exists(), "closing saves the index");

    // Restart: the saved graph loads, results are identical.
    let store = SqliteStore::open(&cfg(dir.path())).unwrap();
    assert_eq!(store.indexed_memories(), 300);
    for (q, want) in before.iter().enumerate() {
        assert_eq!(&top(&store, &t, q as u64).await, want, "query {q}");
    }
    store.close();

    // Files removed: rebuilt from the stored vectors at start.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = SqliteStore::open(&cfg(dir.path())).unwrap();
    assert_eq!(store.indexed_memories(), 300);
    // A rebuilt graph is another approximation: the query's own memory still comes first,
    // and over all queries the top 10 agrees with exact search (random 16-dimensional
    // vectors are a hard case for any graph, so one query may differ more than others).
    let mut found = 0;
    for q in 0..before.len() {
        let got: Vec<MemoryId> = top(&store, &t, q as u64)
            .await
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(got[0], ids[q], "query {q}");
        let exact = exact_top(&ids, q as u64, 10);
        found += got.iter().filter(|id| exact.contains(id)).count();
    }
    let recall = found as f64 / (before.len() * 10) as f64;
    assert!(recall >= 0.9, "recall@10 of the rebuilt graph {recall}");
    store.close();

    // Damaged: rebuilt too, not a failure to start.
    let len = std::fs::metadata(&graph).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&graph)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let store = SqliteStore::open(&cfg(dir.path())).unwrap();
    assert_eq!(store.indexed_memories(), 300);
    assert_eq!(top(&store, &t, 7).await[0].0, ids[7]);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_changes_made_while_stopped_are_applied_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&cfg(dir.path())).unwrap();
    let ids = fill(&store, &t, 100).await;
    assert_eq!(top(&store, &t, 5).await[0].0, ids[5]);
    store.close();

    // Another process without the index (the CLI) deletes a memory and changes another.
    let cli = SqliteStore::open(&SqliteConfig {
        vector_index: false,
        ..SqliteConfig::new(dir.path())
    })
    .unwrap();
    let svc = MemoryService::new(std::sync::Arc::new(cli.clone()));
    svc.forget(&t, ids[5]).await.unwrap();
    let patch = engram_core::MemoryPatch {
        content: Some(
            engram_core::validate::Content::parse("new words".into(), "content").unwrap(),
        ),
        ..Default::default()
    };
    svc.update(&t, ids[6], patch).await.unwrap();
    cli.close();

    let store = SqliteStore::open(&cfg(dir.path())).unwrap();
    let hits = top(&store, &t, 5).await;
    assert!(hits.iter().all(|h| h.0 != ids[5]), "deleted memory found");
    let hits = top(&store, &t, 6).await;
    assert!(hits.iter().all(|h| h.0 != ids[6]), "stale vector found");
    assert_eq!(store.indexed_memories(), 98);
    // Other tenants see nothing.
    assert!(top(&store, &TenantId::parse("other").unwrap(), 1)
        .await
        .is_empty());
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_quantization_rebuilds_the_index_and_search_still_finds() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&SqliteConfig {
        vector_quantization: VectorQuantization::F16,
        ..cfg(dir.path())
    })
    .unwrap();
    let ids = fill(&store, &t, 300).await;
    // The first search loads the index of the model registered since the store opened.
    assert_eq!(top(&store, &t, 0).await[0].0, ids[0]);
    store.close();
    let meta =
        || std::fs::read_to_string(dir.path().join("index/vectors.usearch.meta.json")).unwrap();
    assert!(meta().contains("\"f16\""), "{}", meta());

    for (quantization, exact_max) in [
        // The graph answers (the saved f16 graph is replaced by an i8 one at open) …
        (VectorQuantization::I8, 0),
        // … and the exact path over a filter's candidates reads i8 vectors too.
        (VectorQuantization::I8, usize::MAX),
        // Back to f32: rebuilt again.
        (VectorQuantization::F32, 0),
    ] {
        let store = SqliteStore::open(&SqliteConfig {
            vector_quantization: quantization,
            exact_search_max: exact_max,
            ..SqliteConfig::new(dir.path())
        })
        .unwrap();
        assert_eq!(store.indexed_memories(), 300);
        let notes = MemoryFilter {
            memory_types: vec![engram_core::MemoryType::Note],
            ..MemoryFilter::default()
        };
        let mut found = 0;
        for q in 0..20u64 {
            let hits = store
                .nearest(&t, &model(), &vector(q), &notes, Nearest::answer(10, 0.7))
                .await
                .unwrap();
            // A memory's own vector is its best match at any of these precisions.
            assert_eq!(hits[0].id, ids[q as usize], "{quantization} query {q}");
            let exact = exact_top(&ids, q, 10);
            found += hits.iter().filter(|h| exact.contains(&h.id)).count();
        }
        let recall = found as f64 / 200.0;
        assert!(recall >= 0.9, "{quantization}: recall@10 {recall}");
        // The rebuilt index is saved in its own quantization.
        store.close();
        let saved = meta();
        assert!(saved.contains(&format!("\"{quantization}\"")), "{saved}");
    }
}

/// With i8 vectors the graph's similarities are rounded, by up to a few thousandths, so
/// near ties at the caller's cut could fall on the wrong side of it. The memories whose
/// side of the cut the rounding leaves open are scored again against the f32 vectors the
/// store holds: the first `keep` are the exact top `keep` of the memories the search
/// found, the memory at the cut has its exact score, and every score is within the
/// rounding's margin of the exact one. Without that step the scores are the rounded ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i8_search_settles_its_cut_from_the_stored_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&i8_cfg(dir.path(), 32)).unwrap();
    let ids = fill(&store, &t, 300).await;
    let cosine = |id: &MemoryId, q: u64| {
        let i = ids.iter().position(|x| x == id).expect("a stored memory");
        let (v, query) = (vector(i as u64), vector(q));
        let dot: f32 = v.iter().zip(&query).map(|(a, b)| a * b).sum();
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        dot / (norm(&v) * norm(&query))
    };
    // As a semantic search asks: k = 10 kept of k and a quarter.
    let want = Nearest {
        keep: 10,
        ..Nearest::answer(13, 0.7)
    };
    let (mut worst, mut rounded_kept) = (0f32, 0);
    for q in 0..20u64 {
        let hits = top_for(&store, &t, q, want).await;
        assert_eq!(hits.len(), 13);
        let kept: HashSet<MemoryId> = hits[..10].iter().map(|h| h.0).collect();
        // Of the memories the search returned, the 10 best by exact cosine. (Not of all
        // 300: a graph built on two threads can leave a node or two that no walk reaches,
        // one of a query's exact top 10 in about one run of four here, and what the graph
        // finds is recall's business, tested above. The cut is about the order of what
        // it found.)
        let mut by_exact: Vec<MemoryId> = hits.iter().map(|h| h.0).collect();
        by_exact.sort_by(|a, b| cosine(b, q).total_cmp(&cosine(a, q)));
        let exact: HashSet<MemoryId> = by_exact[..10].iter().copied().collect();
        assert_eq!(
            kept, exact,
            "query {q}: the first 10 are not the exact top 10 of the memories found"
        );
        let (cut, score) = hits[9];
        assert!(
            (score - cosine(&cut, q)).abs() < 1e-5,
            "query {q}: the cut's score"
        );
        for (id, score) in &hits {
            let gap = (score - cosine(id, q)).abs();
            worst = worst.max(gap);
            rounded_kept += usize::from(gap > 1e-5);
        }
    }
    // Every score is within its rounding's margin (about 0.007 for these 16-dimensional
    // vectors, whose largest components are near 0.43), and the hits far from the cut
    // were not read again.
    assert!(worst < 0.01, "a score {worst} from the exact one");
    assert!(rounded_kept > 0, "every hit was scored again");
    store.close();

    let store = SqliteStore::open(&i8_cfg(dir.path(), 0)).unwrap();
    let rounded = tops(&store, &t).await;
    let worst = rounded
        .iter()
        .enumerate()
        .flat_map(|(q, h)| h.iter().map(move |hit| (q, hit)))
        .map(|(q, (id, score))| (score - cosine(id, q as u64)).abs())
        .fold(0f32, f32::max);
    assert!(worst > 1e-4, "i8 scores equal f32's: {worst}");
    store.close();
}

/// A hybrid search's vector half is not scored again from the stored f32 vectors: its
/// scores are the graph's, as are those `similarities` gives the keyword candidates it
/// left out, so fusion weighs the two alike. The same search as an answer is scored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_for_fusion_keeps_the_graph_scores_similarities_gives() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&i8_cfg(dir.path(), 32)).unwrap();
    fill(&store, &t, 300).await;
    let fusion = Nearest {
        purpose: NearestFor::Fusion,
        ..Nearest::answer(10, 0.7)
    };
    let (mut answers_differ, mut compared) = (false, 0);
    for q in 0..20 {
        let fused = top_for(&store, &t, q, fusion).await;
        let answer = top_for(&store, &t, q, Nearest::answer(10, 0.7)).await;
        assert_eq!(fused.len(), 10);
        let ids: Vec<MemoryId> = fused.iter().map(|(id, _)| *id).collect();
        let graph: std::collections::HashMap<MemoryId, f32> = store
            .similarities(&t, &model(), &vector(q), &ids, 0.7)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.score))
            .collect();
        for (id, score) in &fused {
            assert_eq!(graph.get(id), Some(score), "query {q}");
            compared += 1;
        }
        for (id, score) in &answer {
            if let Some(g) = graph.get(id) {
                answers_differ |= (g - score).abs() > 1e-5;
            }
        }
    }
    assert_eq!(compared, 200);
    assert!(answers_differ, "the answers were not scored again");
    store.close();
}

/// engram-index's 2,000 real MiniLM vectors (and its queries), and a model for them.
fn minilm_fixture() -> (engram_index::eval::Fixture, ModelInfo) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engram-index/tests/fixtures/minilm-2k.f16");
    let fx = engram_index::eval::Fixture::read(&path).unwrap();
    let model = ModelInfo {
        id: "test/minilm-fixture".into(),
        revision: "1".into(),
        dim: fx.base.dim,
    };
    (fx, model)
}

/// A hybrid search's vector half walks the graph as wide as `vector_hybrid_expansion`
/// says, a semantic search as `vector_search_expansion` says, over the same graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_purpose_walks_as_wide_as_its_setting() {
    let (fx, model) = minilm_fixture();
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    // Every search through the graph (no exact search over few candidates), and no
    // re-scoring, which only an answer gets: the purposes differ in their walks alone.
    let cfg = |answer: usize, fusion: usize| SqliteConfig {
        exact_search_max: 0,
        vector_rescore: 0,
        vector_search_expansion: answer,
        vector_hybrid_expansion: fusion,
        ..SqliteConfig::new(dir.path())
    };
    let store = SqliteStore::open(&cfg(64, 8)).unwrap();
    let vectors = (0..fx.base.len())
        .map(|i| fx.base.row(i).to_vec())
        .collect();
    store_vectors(&store, &t, &model, vectors, |_| None).await;
    let search = |store: SqliteStore, purpose: NearestFor| {
        let (t, model, fx) = (&t, &model, &fx);
        async move {
            let mut all = Vec::new();
            for i in 0..fx.queries.len() {
                let want = Nearest {
                    purpose,
                    ..Nearest::answer(10, 0.0)
                };
                let hits = store
                    .nearest(t, model, fx.queries.row(i), &MemoryFilter::default(), want)
                    .await
                    .unwrap();
                assert_eq!(hits.len(), 10);
                all.push(hits.into_iter().map(|h| h.id).collect::<Vec<_>>());
            }
            all
        }
    };
    let wide = search(store.clone(), NearestFor::Answer).await;
    let narrow = search(store.clone(), NearestFor::Fusion).await;
    store.close();
    // The same saved graph, both purposes at one width: each purpose above walked as wide
    // as its own setting says.
    for (width, expected) in [(64, &wide), (8, &narrow)] {
        let store = SqliteStore::open(&cfg(width, width)).unwrap();
        for purpose in [NearestFor::Answer, NearestFor::Fusion] {
            assert_eq!(&search(store.clone(), purpose).await, expected, "{width}");
        }
        store.close();
    }
    let differs = wide.iter().zip(&narrow).filter(|(w, n)| w != n).count();
    assert!(differs > 0, "no query walked further");
}

/// A filter passing 1,000 memories, more than a shortlist keeps: on real embeddings the
/// exact search over the candidates its sketches choose returns the top 10 that scoring
/// every candidate returns, nearly all of the top 100, and only memories the filter passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortlisted_exact_search_finds_what_scoring_every_candidate_finds() {
    let (fx, model) = minilm_fixture();
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&SqliteConfig::new(dir.path())).unwrap();
    let vectors = (0..fx.base.len())
        .map(|i| fx.base.row(i).to_vec())
        .collect();
    let ids = store_vectors(&store, &t, &model, vectors, |i| {
        Some(if i % 2 == 0 { "even" } else { "odd" })
    })
    .await;
    let even: HashSet<MemoryId> = ids.iter().step_by(2).copied().collect();
    let filter = MemoryFilter {
        user_id: Some("even".into()),
        ..MemoryFilter::default()
    };
    let search = |store: SqliteStore, limit: u32| {
        let (t, model, filter, fx) = (&t, &model, &filter, &fx);
        async move {
            let mut all = Vec::new();
            for i in 0..fx.queries.len() {
                let hits = store
                    .nearest(
                        t,
                        model,
                        fx.queries.row(i),
                        filter,
                        Nearest::answer(limit, 0.0),
                    )
                    .await
                    .unwrap();
                assert_eq!(hits.len(), limit as usize);
                all.push(hits.into_iter().map(|h| h.id).collect::<Vec<_>>());
            }
            all
        }
    };
    let short_10 = search(store.clone(), 10).await;
    let short_100 = search(store.clone(), 100).await;
    store.close();
    let every = SqliteConfig {
        vector_shortlist: 0,
        ..SqliteConfig::new(dir.path())
    };
    let store = SqliteStore::open(&every).unwrap();
    let all_10 = search(store.clone(), 10).await;
    let all_100 = search(store.clone(), 100).await;
    store.close();

    let n = fx.queries.len();
    for hits in short_10.iter().chain(&short_100) {
        assert!(hits.iter().all(|id| even.contains(id)));
    }
    let same = short_10.iter().zip(&all_10).filter(|(a, b)| a == b).count();
    assert!(
        same * 100 >= n * 99,
        "top 10 alike for {same} of {n} queries"
    );
    let same = short_100
        .iter()
        .zip(&all_100)
        .filter(|(a, b)| a[..10] == b[..10])
        .count();
    assert!(
        same * 100 >= n * 99,
        "top 10 of 100 alike for {same} of {n} queries"
    );
    let kept: usize = short_100
        .iter()
        .zip(&all_100)
        .map(|(a, b)| a.iter().filter(|id| b.contains(id)).count())
        .sum();
    assert!(kept * 100 >= n * 100 * 97, "{kept} of the top 100s kept");
}

/// Rescoring reads a first window by the row id the index holds for it. A row renumbered
/// since (VACUUM may renumber a table's rows; here every row moves up by one, so each
/// held row id names another memory's row) is read by its key instead, and the hits and
/// their scores stay what they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescoring_finds_vectors_whose_rows_were_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::parse("t").unwrap();
    let store = SqliteStore::open(&i8_cfg(dir.path(), 32)).unwrap();
    fill(&store, &t, 300).await;
    let before = tops(&store, &t).await;
    let db = rusqlite::Connection::open(dir.path().join(engram_sqlite::DB_FILE)).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute_batch(
        "UPDATE memory_vectors SET rowid = rowid + 1000000;
         UPDATE memory_vectors SET rowid = rowid - 999999;",
    )
    .unwrap();
    let moved: i64 = db
        .query_row(
            "SELECT count(*) FROM memory_vectors WHERE rowid > 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(moved, 300);
    for (q, (after, before)) in tops(&store, &t).await.iter().zip(&before).enumerate() {
        assert_eq!(after.len(), before.len());
        for (a, b) in after.iter().zip(before) {
            assert_eq!(a.0, b.0, "query {q}");
            assert!(
                (a.1 - b.1).abs() < 1e-6,
                "query {q}: {} against {}",
                a.1,
                b.1
            );
        }
    }
    store.close();
}
