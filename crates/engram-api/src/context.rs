//! `POST /api/v1/context` on the wire.

use std::collections::BTreeMap;

use engram_core::context::{Assembled, Tier, TokenizerKind};
use engram_core::context_service::ContextRequest;
use engram_core::validate::Label;
use engram_core::{CoreError, Scope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whose memories a context draws on. The operational tier needs `agent_id`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeBody {
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub project: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
}

impl ScopeBody {
    pub fn into_domain(self) -> Result<Scope, CoreError> {
        let label = |v: Option<String>, f: &str| -> Result<Option<String>, CoreError> {
            v.map(|s| Label::parse(s, &format!("scope.{f}")).map(Label::into_inner))
                .transpose()
        };
        Ok(Scope {
            user_id: label(self.user_id, "user_id")?,
            agent_id: label(self.agent_id, "agent_id")?,
            project: label(self.project, "project")?,
            domain: label(self.domain, "domain")?,
            session_id: label(self.session_id, "session_id")?,
        })
    }
}

/// `POST /api/v1/context`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextBody {
    /// What the agent is about to do; chunks are chosen by relevance to it.
    pub task: String,
    #[serde(default)]
    pub scope: ScopeBody,
    /// The budget, 1..200000 tokens (default 4000), counted with `tokenizer`.
    pub max_tokens: Option<u32>,
    /// Which of operational, working, long_term, knowledge (default all).
    pub tiers: Option<Vec<String>>,
    /// Optional caps per tier, in tokens: `{"knowledge": 1000}`.
    pub quotas: Option<BTreeMap<String, u32>>,
    /// `cl100k` (default) or `o200k`.
    pub tokenizer: Option<String>,
}

impl ContextBody {
    pub fn into_domain(self) -> Result<ContextRequest, CoreError> {
        let mut tiers = Vec::new();
        for (i, t) in self.tiers.unwrap_or_default().iter().enumerate() {
            let tier = Tier::parse(t, &format!("tiers[{i}]"))?;
            if !tiers.contains(&tier) {
                tiers.push(tier);
            }
        }
        let mut quotas = BTreeMap::new();
        for (name, q) in self.quotas.unwrap_or_default() {
            quotas.insert(Tier::parse(&name, &format!("quotas.{name}"))?, q);
        }
        let tokenizer = match self.tokenizer.as_deref() {
            None => TokenizerKind::Cl100k,
            Some(s) => TokenizerKind::parse(s)?,
        };
        ContextRequest::new(
            &self.task,
            self.scope.into_domain()?,
            self.max_tokens,
            tiers,
            quotas,
            tokenizer,
        )
    }
}

/// One chunk of the context.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChunkResponse {
    /// operational, working, long_term or knowledge.
    pub tier: String,
    /// What it is: a record kind (task, decision, …), a memory type, `metrics` or `event`.
    pub kind: String,
    pub content: String,
    /// 0..1: how relevant to the task.
    pub relevance: f32,
    /// Tokens of its line in `rendered`.
    pub tokens: u32,
    /// What it cites: `<kind>:<id>` for a working record, `memory:<id>` for a memory.
    pub source_id: String,
    /// Cut to fit (only when nothing else fit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Sources of near-duplicates collapsed into this chunk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ContextResponse {
    pub chunks: Vec<ChunkResponse>,
    /// Tokens of `rendered`: never more than `max_tokens`.
    pub total_tokens: u32,
    /// Prompt-ready text, each chunk citing its source id.
    pub rendered: String,
}

impl From<Assembled> for ContextResponse {
    fn from(a: Assembled) -> Self {
        ContextResponse {
            chunks: a
                .chunks
                .into_iter()
                .map(|c| ChunkResponse {
                    tier: c.tier.as_str().to_owned(),
                    kind: c.kind,
                    content: c.content,
                    relevance: c.relevance,
                    tokens: c.tokens,
                    source_id: c.source_id,
                    truncated: c.truncated,
                    duplicates: c.duplicates,
                })
                .collect(),
            total_tokens: a.total_tokens,
            rendered: a.rendered,
        }
    }
}
