use std::sync::Arc;

use engram_core::rate_limit::{Quota, RateLimiter};
use engram_core::{KeyService, TenantId};
use engram_server::{AppState, HttpConfig};
use engram_sqlite::{SqliteConfig, SqliteStore};
use reqwest::{header::HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

pub struct TestApp {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
    pub keys: KeyService,
    pub store: SqliteStore,
    _dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Asserts this is engram's error body with the given status, code and field.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let e = &self.body["error"];
        assert_eq!(e["code"], code, "body: {}", self.body);
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.body
        );
        match field {
            Some(f) => assert_eq!(e["field"], f, "body: {}", self.body),
            None => assert!(e["field"].is_null(), "body: {}", self.body),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(HttpConfig::default()).await
}

pub async fn spawn_app_with(cfg: HttpConfig) -> TestApp {
    spawn(cfg, engram_core::ops::OpsConfig::default(), None).await
}

/// A server without a scratchpad store (its routes answer 503).
pub async fn spawn_app_without_scratchpads() -> TestApp {
    spawn_inner(
        HttpConfig::default(),
        engram_core::ops::OpsConfig::default(),
        None,
        false,
    )
    .await
}

/// A server whose operational tier has these bounds.
pub async fn spawn_app_ops(ops_config: engram_core::ops::OpsConfig) -> TestApp {
    spawn(HttpConfig::default(), ops_config, None).await
}

/// A server limiting each tenant's `/api/v1` requests to `quota`, counted by `limiter`.
pub async fn spawn_app_rate_limited(limiter: Arc<dyn RateLimiter>, quota: Quota) -> TestApp {
    spawn(
        HttpConfig::default(),
        engram_core::ops::OpsConfig::default(),
        Some((limiter, quota)),
    )
    .await
}

async fn spawn(
    cfg: HttpConfig,
    ops_config: engram_core::ops::OpsConfig,
    rate_limit: Option<(Arc<dyn RateLimiter>, Quota)>,
) -> TestApp {
    spawn_inner(cfg, ops_config, rate_limit, true).await
}

async fn spawn_inner(
    cfg: HttpConfig,
    ops_config: engram_core::ops::OpsConfig,
    rate_limit: Option<(Arc<dyn RateLimiter>, Quota)>,
    scratchpads: bool,
) -> TestApp {
    engram_server::metrics::install();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig::new(dir.path())).unwrap();
    let memories = Arc::new(store.clone());
    let search = engram_core::SearchService::new(
        memories.clone(),
        memories.clone(),
        memories.clone(),
        engram_core::EmbedderSlot::default(),
        Default::default(),
    );
    let state = AppState::new(
        memories.clone(),
        memories.clone(),
        memories.clone(),
        search,
        Arc::new(engram_core::ops::InMemoryOps::new(&ops_config)),
        ops_config,
        vec![Arc::new(engram_server::StoreCheck(memories))],
    );
    let state = if scratchpads {
        state.with_scratchpads(Arc::new(
            engram_core::scratchpad::InMemoryScratchpads::default(),
        ))
    } else {
        state
    };
    let state = match rate_limit {
        Some((limiter, quota)) => state.with_rate_limit(limiter, quota),
        None => state,
    };
    let keys = state.keys.clone();
    let (key, _) = keys
        .create(&TenantId::parse("tenant-a").unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = engram_server::router(state, &cfg);
    tokio::spawn(async move { axum_serve(listener, app).await });
    TestApp {
        base: format!("http://{addr}"),
        key: key.expose().to_owned(),
        http: reqwest::Client::new(),
        keys,
        store,
        _dir: dir,
    }
}

async fn axum_serve(listener: tokio::net::TcpListener, app: axum::Router) {
    axum::serve(listener, app).await.unwrap();
}

impl TestApp {
    /// A key for another tenant.
    pub async fn key_for(&self, tenant: &str) -> String {
        let (k, _) = self
            .keys
            .create(&TenantId::parse(tenant).unwrap())
            .await
            .unwrap();
        k.expose().to_owned()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Resp {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        Resp {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, Some(&self.key), None, &[])
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(&self.key), Some(&body), &[])
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(&self.key), Some(&body), &[])
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PUT, path, Some(&self.key), Some(&body), &[])
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, Some(&self.key), None, &[])
            .await
    }

    /// Creates a memory and returns its JSON.
    pub async fn create(&self, body: Value) -> Value {
        let r = self.post("/api/v1/memories", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    pub async fn create_text(&self, content: &str) -> Value {
        self.create(json!({ "content": content })).await
    }

    /// Ids of the memories a list query returns.
    pub async fn list_ids(&self, query: &str) -> Vec<String> {
        let r = self.get(&format!("/api/v1/memories?{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }
}
