//! Where memory commands run: the local data directory (calling the core directly) or a
//! server over HTTP. Both speak the API's DTOs, so output is the same either way.

use anyhow::{anyhow, Context};
use engram_api::{
    CreateMemoryRequest, ErrorBody, ListParams, ListResponse, MemoryResponse, SearchBody,
    SearchResponse, UpdateMemoryRequest,
};
use engram_core::{CoreError, EmbedderSlot, MemoryId, MemoryService, SearchMode, TenantId};

use std::sync::Arc;

use engram_core::ops::InMemoryOps;

use crate::backends::Backends;
use crate::cli::TargetArgs;
use crate::config::Config;

pub enum Target {
    Local {
        svc: MemoryService,
        store: Backends,
        tenant: TenantId,
        cfg: Box<Config>,
    },
    Remote {
        http: reqwest::Client,
        base: String,
        key: String,
    },
}

/// A core error, worded as the server would word it.
fn core(e: CoreError) -> anyhow::Error {
    let body = ErrorBody::from(&e);
    describe(&body)
}

fn describe(b: &ErrorBody) -> anyhow::Error {
    match &b.error.field {
        Some(f) => anyhow!("{} ({}, field `{f}`)", b.error.message, b.error.code),
        None => anyhow!("{} ({})", b.error.message, b.error.code),
    }
}

impl Target {
    pub async fn open(cfg: &Config, args: &TargetArgs) -> anyhow::Result<Target> {
        match &args.server {
            Some(url) => {
                let key = args
                    .key
                    .clone()
                    .context("--server needs --key KEY (or ENGRAM_KEY); create one with `engram keys create`")?;
                Ok(Target::Remote {
                    http: reqwest::Client::builder()
                        .timeout(std::time::Duration::from_secs(60))
                        .build()?,
                    base: format!("{}/api/v1", url.trim_end_matches('/')),
                    key,
                })
            }
            None => {
                let cfg = args.store.apply(cfg.clone());
                let store = Backends::open(&cfg, false).await?;
                Ok(Target::Local {
                    svc: MemoryService::new(store.memories.clone()),
                    store,
                    tenant: TenantId::parse(&args.tenant).map_err(core)?,
                    cfg: Box::new(cfg),
                })
            }
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Option<T>> {
        let Target::Remote { key, .. } = self else {
            unreachable!("send is only called in remote mode")
        };
        let resp = req
            .bearer_auth(key)
            .send()
            .await
            .context("could not reach the engram server")?;
        let status = resp.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(None);
            }
            return Ok(Some(resp.json().await.context("unexpected response body")?));
        }
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => Err(describe(&b)),
            Err(_) => Err(anyhow!("server answered {status}: {text}")),
        }
    }

    fn url(&self, path: &str) -> String {
        match self {
            Target::Remote { base, .. } => format!("{base}{path}"),
            Target::Local { .. } => String::new(),
        }
    }

    fn http(&self) -> &reqwest::Client {
        match self {
            Target::Remote { http, .. } => http,
            Target::Local { .. } => unreachable!("http is only used in remote mode"),
        }
    }

    pub async fn add(
        &self,
        req: CreateMemoryRequest,
        idempotency_key: Option<String>,
    ) -> anyhow::Result<MemoryResponse> {
        match self {
            Target::Local { svc, tenant, .. } => {
                let new = req.into_domain().map_err(core)?;
                let (m, _) = svc
                    .remember(tenant, new, idempotency_key.as_deref())
                    .await
                    .map_err(core)?;
                Ok(m.into())
            }
            Target::Remote { .. } => {
                let mut r = self.http().post(self.url("/memories")).json(&req);
                if let Some(k) = idempotency_key {
                    r = r.header("Idempotency-Key", k);
                }
                self.send(r).await?.context("empty response")
            }
        }
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<MemoryResponse> {
        match self {
            Target::Local { svc, tenant, .. } => {
                let id = MemoryId::parse(id, "id").map_err(core)?;
                Ok(svc.get(tenant, id).await.map_err(core)?.into())
            }
            Target::Remote { .. } => {
                let r = self.http().get(self.url(&format!("/memories/{id}")));
                self.send(r).await?.context("empty response")
            }
        }
    }

    pub async fn list(&self, params: ListParams) -> anyhow::Result<ListResponse> {
        match self {
            Target::Local { svc, tenant, .. } => {
                let q = params.into_domain().map_err(core)?;
                Ok(svc.list(tenant, &q).await.map_err(core)?.into())
            }
            Target::Remote { .. } => {
                let r = self.http().get(self.url("/memories")).query(&params);
                self.send(r).await?.context("empty response")
            }
        }
    }

    pub async fn update(
        &self,
        id: &str,
        req: UpdateMemoryRequest,
    ) -> anyhow::Result<MemoryResponse> {
        match self {
            Target::Local { svc, tenant, .. } => {
                let id = MemoryId::parse(id, "id").map_err(core)?;
                let patch = req.into_domain().map_err(core)?;
                Ok(svc.update(tenant, id, patch).await.map_err(core)?.into())
            }
            Target::Remote { .. } => {
                let r = self
                    .http()
                    .patch(self.url(&format!("/memories/{id}")))
                    .json(&req);
                self.send(r).await?.context("empty response")
            }
        }
    }

    pub async fn search(&self, body: SearchBody) -> anyhow::Result<SearchResponse> {
        match self {
            Target::Local {
                store, tenant, cfg, ..
            } => {
                let req = body.into_domain().map_err(core)?;
                let slot = EmbedderSlot::default();
                if req.mode != SearchMode::Keyword {
                    // Without a model a hybrid search runs as keyword search, as the
                    // server's does; a semantic one fails saying why.
                    match engram_embed::build(&cfg.embedding).await {
                        Ok(e) => slot.set(e),
                        Err(e) => tracing::warn!(error = %e, "no embedder for the query"),
                    }
                }
                let search = crate::serve::search_service(store, slot, cfg.search.to_core());
                Ok(search.search(tenant, &req).await.map_err(core)?.into())
            }
            Target::Remote { .. } => {
                let r = self.http().post(self.url("/search")).json(&body);
                self.send(r).await?.context("empty response")
            }
        }
    }

    pub async fn context(
        &self,
        body: engram_api::ContextBody,
    ) -> anyhow::Result<engram_api::ContextResponse> {
        match self {
            Target::Local {
                store, tenant, cfg, ..
            } => {
                let req = body.into_domain().map_err(core)?;
                let slot = EmbedderSlot::default();
                match engram_embed::build(&cfg.embedding).await {
                    Ok(e) => slot.set(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "no embedder for the task: keyword search only")
                    }
                }
                let search = crate::serve::search_service(store, slot, cfg.search.to_core());
                // The operational tier lives in a server's memory: locally it is empty.
                let state = crate::serve::app_state(
                    store,
                    search,
                    Arc::new(InMemoryOps::new(&cfg.ops)),
                    &cfg.ops,
                    Vec::new(),
                );
                Ok(state
                    .context
                    .assemble(tenant, &req)
                    .await
                    .map_err(core)?
                    .into())
            }
            Target::Remote { .. } => {
                let r = self.http().post(self.url("/context")).json(&body);
                self.send(r).await?.context("empty response")
            }
        }
    }

    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Target::Local { svc, tenant, .. } => {
                let id = MemoryId::parse(id, "id").map_err(core)?;
                svc.forget(tenant, id).await.map_err(core)
            }
            Target::Remote { .. } => {
                let r = self.http().delete(self.url(&format!("/memories/{id}")));
                self.send::<serde_json::Value>(r).await.map(|_| ())
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Target::Local { store, .. } = self {
            // Flush deferred writes (accessed_at) before the process exits.
            store.close();
        }
    }
}
