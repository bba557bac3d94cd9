//! OpenAPI schemas for core enums that travel as strings. They mirror the core's types
//! (which stay free of wire concerns); a test keeps the two lists equal.
#![allow(non_camel_case_types)]

use utoipa::ToSchema;

/// What kind of thing a memory records.
#[derive(ToSchema)]
pub enum MemoryType {
    note,
    meeting,
    task,
    insight,
    decision,
    contact,
    file,
    fact,
    episode,
    procedure,
    incident,
    custom,
}

/// Where a memory came from.
#[derive(ToSchema)]
pub enum Source {
    manual,
    chat,
    file,
    integration,
    ai_extracted,
    import,
}

/// Where a memory is in the embedding pipeline.
#[derive(ToSchema)]
pub enum EmbeddingStatus {
    pending,
    processing,
    completed,
    failed,
}

/// Which retrievers a search uses.
#[derive(ToSchema)]
pub enum SearchMode {
    hybrid,
    semantic,
    keyword,
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    fn names<S: PartialSchema>() -> Vec<String> {
        let v = serde_json::to_value(S::schema()).unwrap();
        v["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn mirrors_match_the_core() {
        let core = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names::<super::MemoryType>(),
            core(
                &engram_core::MemoryType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
            )
        );
        assert_eq!(
            names::<super::Source>(),
            core(
                &engram_core::Source::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
            )
        );
        assert_eq!(
            names::<super::SearchMode>(),
            core(&["hybrid", "semantic", "keyword"])
        );
        for m in ["hybrid", "semantic", "keyword"] {
            assert_eq!(engram_core::SearchMode::parse(m).unwrap().as_str(), m);
        }
        assert_eq!(
            names::<super::EmbeddingStatus>(),
            core(
                &engram_core::EmbeddingStatus::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
            )
        );
    }
}
