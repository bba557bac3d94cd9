//! API keys. A key is `egk_<id>_<secret>`; the store keeps only its SHA-256 and the public
//! `id`, so a leaked database does not leak usable keys.

use std::fmt;
use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CoreError;
use crate::ids::TenantId;
use crate::ports::KeyStore;
use crate::time::{now, Timestamp};

/// A plaintext API key. Shown once at creation; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn hash(&self) -> String {
        hash_key(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

pub fn hash_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// What the store keeps about a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public identifier, safe to show and log (the `<id>` part of the key).
    pub id: String,
    pub tenant: TenantId,
    pub hash: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Creating, checking and revoking keys.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn KeyStore>,
}

impl KeyService {
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        KeyService { store }
    }

    /// Creates a key for `tenant` and returns its plaintext (shown once) and record.
    pub async fn create(&self, tenant: &TenantId) -> Result<(ApiKey, ApiKeyRecord), CoreError> {
        let mut rng = rand::rng();
        let id = Alphanumeric.sample_string(&mut rng, 8).to_lowercase();
        let secret = Alphanumeric.sample_string(&mut rng, 40);
        let key = ApiKey(format!("egk_{id}_{secret}"));
        let record = ApiKeyRecord {
            id,
            tenant: tenant.clone(),
            hash: key.hash(),
            created_at: now(),
            revoked_at: None,
        };
        self.store.create_key(&record).await?;
        tracing::info!(key_id = %record.id, tenant = %tenant, "api key created");
        Ok((key, record))
    }

    /// The tenant a presented key belongs to.
    pub async fn authenticate(&self, presented: &str) -> Result<TenantId, CoreError> {
        if presented.is_empty() || presented.len() > 256 {
            return Err(CoreError::Unauthorized);
        }
        match self.store.find_key(&hash_key(presented)).await? {
            Some(r) if r.revoked_at.is_none() => Ok(r.tenant),
            _ => Err(CoreError::Unauthorized),
        }
    }

    pub async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKeyRecord>, CoreError> {
        Ok(self.store.list_keys(tenant).await?)
    }

    pub async fn revoke(&self, key_id: &str) -> Result<(), CoreError> {
        if self.store.revoke_key(key_id, now()).await? {
            tracing::info!(key_id, "api key revoked");
            Ok(())
        } else {
            Err(CoreError::NotFound {
                what: "active API key",
            })
        }
    }

    /// Whether any key exists at all (revoked ones included).
    pub async fn any(&self) -> Result<bool, CoreError> {
        Ok(!self.store.list_keys(None).await?.is_empty())
    }
}
