//! Upgrades, against a real server: a database that took any text of the migrations a
//! released engram shipped reaches the same schema as a fresh one, and an edited migration
//! that was never shipped is still refused.
//!
//! The server is `ENGRAM_TEST_POSTGRES_URL` (default the cluster `scripts/pgvector`
//! starts), reached without TLS. A missing server fails every test, loudly.

use std::collections::BTreeMap;

use engram_core::StoreError;
use engram_postgres::{PgConfig, PgStore};
use sha2::{Digest, Sha256};

fn postgres_url() -> String {
    std::env::var("ENGRAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

/// Migrations 1–4, as shipped and never changed.
const FIRST_FOUR: [(i64, &str, &str); 4] = [
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "records", include_str!("../migrations/0002_records.sql")),
    (
        3,
        "records_assigned",
        include_str!("../migrations/0003_records_assigned.sql"),
    ),
    (
        4,
        "context_session",
        include_str!("../migrations/0004_context_session.sql"),
    ),
];
const V5_FIRST: &str = include_str!("../migrations/superseded/0005_vector_scope.1.sql");
const V5_NOW: &str = include_str!("../migrations/0005_vector_scope.sql");
const V6_FIRST: &str = include_str!("../migrations/superseded/0006_vector_scope_index.1.sql");
const V6_NOW: &str = include_str!("../migrations/0006_vector_scope_index.sql");

async fn raw_client(schema: &str) -> tokio_postgres::Client {
    let url = postgres_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Postgres with pgvector is needed at {url} without TLS (set \
                 ENGRAM_TEST_POSTGRES_URL, or run scripts/pgvector to start one): {e}"
            )
        });
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path = {schema}, public"
        ))
        .await
        .expect("schema");
    client
}

fn new_schema(tag: &str) -> String {
    format!("t_{tag}_{}", uuid::Uuid::new_v4().simple())
}

/// Applies `migrations` into `schema` as the engram that shipped them did: each in its
/// own transaction, recorded with the SHA-256 of its text.
async fn apply_as_shipped(schema: &str, migrations: &[(i64, &str, &str)]) {
    let mut client = raw_client(schema).await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    bigint PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    for (version, name, sql) in migrations {
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("migration {version}: {e:?}"));
        let sum = hex::encode(Sha256::digest(sql.as_bytes()));
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &sum],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}

async fn connect(schema: &str) -> Result<PgStore, StoreError> {
    let mut cfg = PgConfig::new(postgres_url());
    cfg.schema = Some(schema.to_owned());
    cfg.pool_size = 2;
    PgStore::connect(&cfg).await
}

/// Everything a migration shapes in `schema`: columns, indexes, triggers, functions and
/// constraints, with the schema's name taken out.
async fn catalog(schema: &str) -> BTreeMap<String, String> {
    let client = raw_client(schema).await;
    let queries = [
        "SELECT 'column ' || table_name || '.' || column_name,
                concat_ws(' ', data_type, udt_name, is_nullable, column_default, is_identity)
         FROM information_schema.columns WHERE table_schema = $1",
        "SELECT 'index ' || indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
        "SELECT 'trigger ' || t.tgname, pg_get_triggerdef(t.oid)
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND NOT t.tgisinternal",
        "SELECT 'function ' || p.proname, pg_get_functiondef(p.oid)
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
        "SELECT 'constraint ' || c.conname, pg_get_constraintdef(c.oid)
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = $1",
    ];
    let mut out = BTreeMap::new();
    for q in queries {
        for row in client.query(q, &[&schema]).await.unwrap() {
            let key: String = row.get(0);
            let def: Option<String> = row.get(1);
            let def = def.unwrap_or_default().replace(schema, "<schema>");
            assert!(out.insert(key.clone(), def).is_none(), "{key} twice");
        }
    }
    out
}

async fn versions(schema: &str) -> Vec<i64> {
    let client = raw_client(schema).await;
    client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every combination of texts of migrations 5 and 6 that a released engram applied.
#[tokio::test]
async fn every_shipped_text_of_migrations_5_and_6_upgrades_to_the_fresh_schema() {
    let fresh_schema = new_schema("fresh");
    let fresh = connect(&fresh_schema).await.expect("fresh store");
    let newest = fresh.migration_report().current;
    let want = catalog(&fresh_schema).await;
    assert!(
        want.contains_key("trigger memories_vectors_follow")
            && want["index memory_vectors_scope"].contains("WHERE"),
        "the fresh schema is not the one this test knows: {want:#?}"
    );

    let shipped = [
        ("first", V5_FIRST, V6_FIRST),
        ("mixed", V5_FIRST, V6_NOW),
        ("second", V5_NOW, V6_NOW),
    ];
    for (tag, v5, v6) in shipped {
        let schema = new_schema(tag);
        let mut migrations = FIRST_FOUR.to_vec();
        migrations.push((5, "vector_scope", v5));
        migrations.push((6, "vector_scope_index", v6));
        apply_as_shipped(&schema, &migrations).await;
        let store = connect(&schema)
            .await
            .unwrap_or_else(|e| panic!("{tag} texts of 5 and 6: {e}"));
        let applied: Vec<i64> = store
            .migration_report()
            .applied
            .iter()
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(applied, (7..=newest).collect::<Vec<_>>(), "{tag}");
        assert_eq!(catalog(&schema).await, want, "{tag} texts of 5 and 6");
        // A second start applies nothing and is not refused.
        let again = connect(&schema).await.expect("second start");
        assert!(again.migration_report().applied.is_empty(), "{tag}");
        assert_eq!(versions(&schema).await, (1..=newest).collect::<Vec<_>>());
        store.drop_schema(&schema).await.unwrap();
    }
    fresh.drop_schema(&fresh_schema).await.unwrap();
}

/// Only the texts a release shipped are accepted: any other edit is refused by name.
#[tokio::test]
async fn an_edited_migration_is_refused() {
    let schema = new_schema("edited");
    let mut migrations = FIRST_FOUR.to_vec();
    migrations.push((5, "vector_scope", V5_FIRST));
    apply_as_shipped(&schema, &migrations).await;
    raw_client(&schema)
        .await
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 5",
            &[],
        )
        .await
        .unwrap();
    match connect(&schema).await {
        Err(StoreError::Invalid(msg)) => assert!(
            msg.contains("migration 5 (vector_scope) changed after it was applied"),
            "{msg}"
        ),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an edited migration was accepted"),
    }
    raw_client(&schema)
        .await
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
