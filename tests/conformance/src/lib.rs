//! The conformance suite: stories about storage behaviour written against the core's ports
//! (through `MemoryService` and `KeyService`), never against one backend. Each backend's
//! test file implements [`Backend`] and expands [`conformance_tests!`], so every backend is
//! held to the same behaviour: CRUD, filters, pagination, idempotency, the change log,
//! purges, keys, tenant isolation, and the working tier's records (through
//! `WorkingService`).

pub mod context;
pub mod embedder;
pub mod pipeline;
pub mod records;
pub mod search;
pub mod stories;

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use engram_core::{EmbeddingStore, KeyStore, MemoryStore, RecordStore, SearchIndex};

/// A fresh, empty pair of stores. `guard` keeps temporary resources alive.
pub struct Stores {
    pub memories: Arc<dyn MemoryStore>,
    pub keys: Arc<dyn KeyStore>,
    pub embeddings: Arc<dyn EmbeddingStore>,
    pub search: Arc<dyn SearchIndex>,
    /// The same store's working tier (its mirror writes land in `memories`).
    pub records: Arc<dyn RecordStore>,
    pub guard: Box<dyn Any + Send + Sync>,
}

/// A backend under test.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A new, empty, isolated store (its own file, database or schema).
    async fn fresh(&self) -> Stores;
}

/// Runs an async story on a fresh multi-threaded runtime.
pub fn run<B, F, Fut>(backend: B, story: F)
where
    B: Backend,
    F: FnOnce(Arc<dyn Backend>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(story(Arc::new(backend)));
}

/// Expands to one `#[test]` per story for the given backend expression.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(@each $backend;
            create_then_get_round_trips_every_field,
            idempotency_key_returns_the_original,
            update_changes_only_given_fields,
            concurrent_updates_all_land,
            delete_hides_everywhere,
            list_filters_agree_with_the_reference,
            pages_and_cursors_cover_everything_once,
            bulk_stores_valid_items_when_others_fail,
            a_failing_insert_is_undone_alone,
            retry_embedding_requeues,
            touch_records_access,
            change_log_replays_to_current_state,
            purge_user_and_tenant_remove_everything,
            keys_are_hashed_scoped_and_revocable,
        );
        #[test]
        fn tenant_isolation_holds_for_random_interleavings() {
            $crate::stories::tenant_isolation_property($backend);
        }
    };
    (@each $backend:expr; $($story:ident),+ $(,)?) => {
        $(
            #[test]
            fn $story() {
                $crate::run($backend, |b| async move { $crate::stories::$story(b).await });
            }
        )+
        $crate::conformance_tests!(@pipeline $backend;
            pipeline_embeds_every_pending_memory,
            identical_content_is_embedded_once,
            failures_back_off_then_give_up,
            an_expired_lease_is_requeued,
            a_stale_result_never_overwrites_new_content,
            deleting_removes_derived_vectors,
            reembed_switches_models_without_a_gap,
        );
        $crate::conformance_tests!(@records $backend;
            records_round_trip_every_kind,
            record_lists_agree_with_the_reference_and_pages_cover_everything,
            concurrent_record_updates_all_land,
            a_decision_mirror_follows_its_record,
            a_failed_mirror_write_leaves_no_record,
            agent_state_keys_are_unique_per_agent,
            record_changes_share_the_log_with_memories,
            purges_remove_records_and_their_changes,
            records_are_isolated_by_tenant,
            tier_migration_moves_old_records_once,
        );
        $crate::conformance_tests!(@context $backend;
            context_cites_every_tier_within_the_budget,
        );
        $crate::conformance_tests!(@search $backend;
            keyword_finds_a_write_before_its_embedding,
            search_records_access_once_per_resolution,
            search_never_returns_deleted_or_foreign_memories,
            a_lagging_index_loses_no_live_hit,
            held_rerank_fields_agree_with_the_memories,
            updates_and_purges_reach_the_indexes,
            search_filters_never_leak,
            context_vectors_follow_their_sessions,
            hybrid_search_embeds_the_query_without_the_speakers_it_names,
            semantic_search_follows_users_contents_and_deletes,
            similarities_score_as_nearest_does,
            hybrid_search_fuses_what_its_vector_search_missed,
            each_mode_says_what_its_vector_list_is_for,
            wide_vectors_and_long_scopes_are_searchable,
            a_model_switch_reaches_searches_of_known_queries,
        );
    };
    (@search $backend:expr; $($story:ident),+ $(,)?) => {
        $(
            #[test]
            fn $story() {
                $crate::run($backend, |b| async move { $crate::search::$story(b).await });
            }
        )+
    };
    (@context $backend:expr; $($story:ident),+ $(,)?) => {
        $(
            #[test]
            fn $story() {
                $crate::run($backend, |b| async move { $crate::context::$story(b).await });
            }
        )+
    };
    (@records $backend:expr; $($story:ident),+ $(,)?) => {
        $(
            #[test]
            fn $story() {
                $crate::run($backend, |b| async move { $crate::records::$story(b).await });
            }
        )+
    };
    (@pipeline $backend:expr; $($story:ident),+ $(,)?) => {
        $(
            #[test]
            fn $story() {
                $crate::run($backend, |b| async move { $crate::pipeline::$story(b).await });
            }
        )+
    };
}
