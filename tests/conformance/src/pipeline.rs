//! Stories of the embedding pipeline: the status lifecycle, the cache, retries with
//! backoff, crashed workers, stale results and deletion.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use engram_core::validate::Content;
use engram_core::{
    Embedder, EmbeddingPipeline, EmbeddingStatus, ListQuery, MemoryFilter, MemoryPatch,
    MemoryService, NewMemory, PipelineConfig, TenantId,
};

use crate::embedder::{vector_of, vector_of_rev, HashEmbedder, DIM};
use crate::{Backend, Stores};

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn fast() -> PipelineConfig {
    PipelineConfig {
        batch_size: 16,
        backoff: Duration::from_millis(1),
        ..Default::default()
    }
}

async fn pipeline(
    s: &Stores,
    embedder: Arc<HashEmbedder>,
    cfg: PipelineConfig,
) -> EmbeddingPipeline {
    EmbeddingPipeline::new(s.embeddings.clone(), embedder, cfg)
        .await
        .unwrap()
}

/// Runs batches until there is nothing left to claim.
async fn drain(p: &EmbeddingPipeline) {
    for _ in 0..1000 {
        if p.run_batch().await.unwrap().claimed == 0 {
            return;
        }
    }
    panic!("the queue never drained");
}

async fn count(svc: &MemoryService, t: &TenantId, status: EmbeddingStatus) -> u64 {
    let q = ListQuery {
        filter: MemoryFilter {
            embedding_status: Some(status),
            ..Default::default()
        },
        ..Default::default()
    };
    svc.list(t, &q).await.unwrap().result.total
}

pub async fn pipeline_embeds_every_pending_memory(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            svc.remember(&t, NewMemory::note(&format!("memory {i}")).unwrap(), None)
                .await
                .unwrap()
                .0,
        );
    }
    let emb = Arc::new(HashEmbedder::default());
    let p = pipeline(&s, emb.clone(), fast()).await;
    assert_eq!(
        s.embeddings.active_model().await.unwrap(),
        Some(emb.model())
    );
    drain(&p).await;
    assert_eq!(count(&svc, &t, EmbeddingStatus::Completed).await, 40);
    assert_eq!(count(&svc, &t, EmbeddingStatus::Pending).await, 0);
    for m in &ids {
        let got = svc.get(&t, m.id).await.unwrap();
        assert_eq!(got.embedding_status, EmbeddingStatus::Completed);
        assert_eq!(got.embedding_model.as_deref(), Some("test/hash"));
        assert!(got.embedding_updated_at.is_some());
        assert!(got.version > m.version);
        let v = s
            .embeddings
            .memory_vectors(&t, m.id, &emb.model())
            .await
            .unwrap();
        assert_eq!(v, vec![vector_of(&m.content)]);
        assert_eq!(v[0].len(), DIM);
        // Another tenant cannot read the vectors.
        assert!(s
            .embeddings
            .memory_vectors(&tenant("t2"), m.id, &emb.model())
            .await
            .unwrap()
            .is_empty());
    }
    let depth = s.embeddings.embedding_queue_depth().await.unwrap();
    assert!(depth.contains(&(EmbeddingStatus::Completed, 40)));
    // A content change puts it back in the queue and it is embedded again.
    let patch = MemoryPatch {
        content: Some(Content::parse("changed".into(), "content").unwrap()),
        ..Default::default()
    };
    svc.update(&t, ids[0].id, patch).await.unwrap();
    assert_eq!(count(&svc, &t, EmbeddingStatus::Pending).await, 1);
    drain(&p).await;
    let v = s
        .embeddings
        .memory_vectors(&t, ids[0].id, &emb.model())
        .await
        .unwrap();
    assert_eq!(v, vec![vector_of("changed")]);
}

pub async fn identical_content_is_embedded_once(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    for _ in 0..3 {
        svc.remember(&t1, NewMemory::note("same words").unwrap(), None)
            .await
            .unwrap();
    }
    let emb = Arc::new(HashEmbedder::default());
    let p = pipeline(&s, emb.clone(), fast()).await;
    drain(&p).await;
    assert_eq!(
        emb.embedded.load(Ordering::SeqCst),
        1,
        "duplicates within a batch are embedded once"
    );
    // Later, the same content again (another tenant too) comes from the cache.
    svc.remember(&t1, NewMemory::note("same words").unwrap(), None)
        .await
        .unwrap();
    svc.remember(&t2, NewMemory::note("same words").unwrap(), None)
        .await
        .unwrap();
    let r = p.run_batch().await.unwrap();
    assert_eq!((r.claimed, r.cache_hits, r.completed), (2, 2, 2));
    assert_eq!(emb.embedded.load(Ordering::SeqCst), 1);
    assert_eq!(count(&svc, &t1, EmbeddingStatus::Completed).await, 4);
}

pub async fn failures_back_off_then_give_up(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m, _) = svc
        .remember(&t, NewMemory::note("hard to embed").unwrap(), None)
        .await
        .unwrap();
    let emb = Arc::new(HashEmbedder::default());
    emb.failing.store(true, Ordering::SeqCst);
    let cfg = PipelineConfig {
        backoff: Duration::from_millis(40),
        ..fast()
    };
    let p = pipeline(&s, emb.clone(), cfg).await;
    let r = p.run_batch().await.unwrap();
    assert_eq!((r.claimed, r.failed), (1, 1));
    let got = svc.get(&t, m.id).await.unwrap();
    assert_eq!(got.embedding_status, EmbeddingStatus::Failed);
    assert!(got
        .embedding_error
        .as_deref()
        .unwrap()
        .contains("switched off"));
    // Not due yet: the sweep leaves it alone; after the backoff it is retried.
    assert_eq!(p.sweep().await.unwrap().retried, 0);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(p.sweep().await.unwrap().retried, 1);
    assert_eq!(p.run_batch().await.unwrap().failed, 1); // attempt 2, backoff 80 ms
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.sweep().await.unwrap().retried, 1);
    assert_eq!(p.run_batch().await.unwrap().failed, 1); // attempt 3, backoff 160 ms
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.sweep().await.unwrap().retried, 1);
    assert_eq!(p.run_batch().await.unwrap().failed, 1); // attempt 4 = retry 3: the last
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        p.sweep().await.unwrap().retried,
        0,
        "given up after 3 retries"
    );
    assert_eq!(p.run_batch().await.unwrap().claimed, 0);
    assert_eq!(emb.calls.load(Ordering::SeqCst), 4);
    // An explicit retry starts over, and succeeds once the embedder works.
    emb.failing.store(false, Ordering::SeqCst);
    let r = svc.retry_embedding(&t, m.id).await.unwrap();
    assert_eq!(r.embedding_status, EmbeddingStatus::Pending);
    drain(&p).await;
    let got = svc.get(&t, m.id).await.unwrap();
    assert_eq!(got.embedding_status, EmbeddingStatus::Completed);
    assert_eq!(got.embedding_error, None);
}

pub async fn an_expired_lease_is_requeued(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    for i in 0..5 {
        svc.remember(&t, NewMemory::note(&format!("m{i}")).unwrap(), None)
            .await
            .unwrap();
    }
    // A worker claims a batch with a short lease, then dies without a word.
    // Long enough that a loaded machine still sweeps before it ends, short enough to wait.
    let lease_until = engram_core::time::now() + chrono::Duration::milliseconds(1500);
    let crashed = s
        .embeddings
        .claim_embeddings(10, lease_until)
        .await
        .unwrap();
    assert_eq!(crashed.len(), 5);
    assert_eq!(count(&svc, &t, EmbeddingStatus::Processing).await, 5);
    // Nobody else can claim them while the lease holds.
    assert!(s
        .embeddings
        .claim_embeddings(10, lease_until)
        .await
        .unwrap()
        .is_empty());
    let emb = Arc::new(HashEmbedder::default());
    let p = pipeline(&s, emb.clone(), fast()).await;
    assert_eq!(p.sweep().await.unwrap().expired_leases, 0);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(p.sweep().await.unwrap().expired_leases, 5);
    assert_eq!(count(&svc, &t, EmbeddingStatus::Processing).await, 0);
    drain(&p).await;
    assert_eq!(count(&svc, &t, EmbeddingStatus::Completed).await, 5);
    // The dead worker's late results are refused: its claim is gone.
    let late: Vec<_> = crashed
        .into_iter()
        .map(|j| (j, vec![vec![0.5; DIM]]))
        .collect();
    let applied = s
        .embeddings
        .complete_embeddings(&emb.model(), late, engram_core::time::now())
        .await
        .unwrap();
    assert!(applied.iter().all(|a| !a));
}

pub async fn a_stale_result_never_overwrites_new_content(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m, _) = svc
        .remember(&t, NewMemory::note("old words").unwrap(), None)
        .await
        .unwrap();
    let emb = Arc::new(HashEmbedder::default());
    let lease = engram_core::time::now() + chrono::Duration::seconds(60);
    let jobs = s.embeddings.claim_embeddings(1, lease).await.unwrap();
    assert_eq!(jobs[0].content, "old words");
    // The content changes while the worker is embedding.
    let patch = MemoryPatch {
        content: Some(Content::parse("new words".into(), "content").unwrap()),
        ..Default::default()
    };
    let updated = svc.update(&t, m.id, patch).await.unwrap();
    assert_eq!(updated.embedding_status, EmbeddingStatus::Pending);
    let stale: Vec<_> = jobs
        .into_iter()
        .map(|j| (j, vec![vector_of("old words")]))
        .collect();
    let applied = s
        .embeddings
        .complete_embeddings(&emb.model(), stale, engram_core::time::now())
        .await
        .unwrap();
    assert_eq!(applied, vec![false]);
    assert!(s
        .embeddings
        .memory_vectors(&t, m.id, &emb.model())
        .await
        .unwrap()
        .is_empty());
    let p = pipeline(&s, emb.clone(), fast()).await;
    drain(&p).await;
    assert_eq!(
        s.embeddings
            .memory_vectors(&t, m.id, &emb.model())
            .await
            .unwrap(),
        vec![vector_of("new words")]
    );
    // A wrong dimension is refused without harming the rest of the batch.
    svc.remember(&t, NewMemory::note("a").unwrap(), None)
        .await
        .unwrap();
    svc.remember(&t, NewMemory::note("b").unwrap(), None)
        .await
        .unwrap();
    let jobs = s.embeddings.claim_embeddings(2, lease).await.unwrap();
    let results = vec![
        (jobs[0].clone(), vec![vec![1.0; 3]]),
        (jobs[1].clone(), vec![vector_of(&jobs[1].content)]),
    ];
    let applied = s
        .embeddings
        .complete_embeddings(&emb.model(), results, engram_core::time::now())
        .await
        .unwrap();
    assert_eq!(applied, vec![false, true]);
}

pub async fn deleting_removes_derived_vectors(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m, _) = svc
        .remember(&t, NewMemory::note("short-lived").unwrap(), None)
        .await
        .unwrap();
    let emb = Arc::new(HashEmbedder::default());
    let p = pipeline(&s, emb.clone(), fast()).await;
    drain(&p).await;
    assert_eq!(
        s.embeddings
            .memory_vectors(&t, m.id, &emb.model())
            .await
            .unwrap()
            .len(),
        1
    );
    svc.forget(&t, m.id).await.unwrap();
    assert!(s
        .embeddings
        .memory_vectors(&t, m.id, &emb.model())
        .await
        .unwrap()
        .is_empty());
    let hashes = vec![m.content_hash.clone()];
    assert_eq!(
        s.embeddings
            .cached_embeddings(&emb.model(), &hashes)
            .await
            .unwrap()
            .len(),
        1
    );
    // A purge removes cached vectors of content nobody holds any more.
    s.memories.purge_tenant(&t).await.unwrap();
    assert!(s
        .embeddings
        .cached_embeddings(&emb.model(), &hashes)
        .await
        .unwrap()
        .is_empty());
}

/// The memory's vectors of `embedder`'s model.
async fn vectors_of(
    s: &Stores,
    t: &TenantId,
    m: &engram_core::Memory,
    embedder: &HashEmbedder,
) -> Vec<Vec<f32>> {
    s.embeddings
        .memory_vectors(t, m.id, &embedder.model())
        .await
        .unwrap()
}

pub async fn reembed_switches_models_without_a_gap(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            svc.remember(&t, NewMemory::note(&format!("memory {i}")).unwrap(), None)
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let old = Arc::new(HashEmbedder::default());
    let short_lease = PipelineConfig {
        lease: Duration::from_millis(100),
        ..fast()
    };
    let p_old = pipeline(&s, old.clone(), short_lease).await;
    drain(&p_old).await;
    // A new model cannot simply start: its vectors would mix with the old ones.
    let new = Arc::new(HashEmbedder {
        revision: 1,
        delay_ms: 30,
        ..Default::default()
    });
    let refused = EmbeddingPipeline::new(s.embeddings.clone(), new.clone(), fast()).await;
    assert!(matches!(refused, Err(engram_core::StoreError::Conflict(_))));
    // Rebuild beside the old vectors, while writes keep coming.
    let (store, emb) = (s.embeddings.clone(), new.clone());
    let job = tokio::spawn(async move { engram_core::reembed(store, emb, 4, |_| {}).await });
    for i in 30..36 {
        // On a loaded machine the rebuild can finish first: then it has switched with
        // every memory so far embedded by the new model (checked below), and writes stop.
        if s.embeddings.active_model().await.unwrap() == Some(new.model()) {
            break;
        }
        ids.push(
            svc.remember(&t, NewMemory::note(&format!("memory {i}")).unwrap(), None)
                .await
                .unwrap()
                .0
                .id,
        );
        // Until the switch the old model stays active and its worker keeps the new
        // memories searchable; every memory has its vectors.
        drain(&p_old).await;
        if s.embeddings.active_model().await.unwrap() != Some(old.model()) {
            // Switched, perhaps before this write: checked below.
            break;
        }
        for id in &ids {
            assert!(!s
                .embeddings
                .memory_vectors(&t, *id, &old.model())
                .await
                .unwrap()
                .is_empty());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = job.await.unwrap().unwrap();
    assert!(!report.was_active);
    assert_eq!(
        s.embeddings.active_model().await.unwrap(),
        Some(new.model())
    );
    // Switched: every memory that existed at the switch has the new model's vectors,
    // completed by it. Only the last write can have come after the switch (the loop
    // stops writing once it sees the new model); the new model's worker takes it below.
    let mut late = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let m = svc.get(&t, *id).await.unwrap();
        // The switch completes every memory it finds; the old worker cannot complete one.
        if m.embedding_status != EmbeddingStatus::Completed {
            assert_eq!(i, ids.len() - 1, "{m:?}");
            late.push(*id);
            continue;
        }
        assert_eq!(
            vectors_of(&s, &t, &m, &new).await,
            vec![vector_of_rev(&m.content, 1)]
        );
    }
    assert!(report.embedded + late.len() >= ids.len());
    // The old model's worker can no longer land results; the new one carries on.
    svc.remember(&t, NewMemory::note("after the switch").unwrap(), None)
        .await
        .unwrap();
    assert!(
        EmbeddingPipeline::new(s.embeddings.clone(), old.clone(), fast())
            .await
            .is_err()
    );
    let r = p_old.run_batch().await.unwrap();
    assert!(r.claimed >= 1 && r.completed == 0, "{r:?}");
    assert!(count(&svc, &t, EmbeddingStatus::Processing).await >= 1);
    let p_new = EmbeddingPipeline::new(s.embeddings.clone(), new.clone(), fast())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(p_new.sweep().await.unwrap().expired_leases >= 1);
    drain(&p_new).await;
    for id in &late {
        let m = svc.get(&t, *id).await.unwrap();
        assert_eq!(m.embedding_status, EmbeddingStatus::Completed);
        assert_eq!(
            vectors_of(&s, &t, &m, &new).await,
            vec![vector_of_rev(&m.content, 1)]
        );
    }
    // Every memory written (fewer than 36 when the rebuild finished first), and the one
    // after the switch.
    assert_eq!(
        count(&svc, &t, EmbeddingStatus::Completed).await,
        ids.len() as u64 + 1
    );
}
