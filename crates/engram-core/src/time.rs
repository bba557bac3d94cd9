//! Timestamps: UTC, microsecond precision, so that every backend round-trips them exactly.

use chrono::{DateTime, SubsecRound, Utc};

/// A UTC instant truncated to microseconds.
pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to microseconds.
pub fn now() -> Timestamp {
    Utc::now().trunc_subsecs(6)
}

/// Microseconds since the Unix epoch (the storage representation).
pub fn to_micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`]. Out-of-range values clamp to the epoch.
pub fn from_micros(us: i64) -> Timestamp {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp (e.g. `2026-01-31T12:00:00Z`).
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc).trunc_subsecs(6))
}

/// Formats as RFC 3339 with microseconds and a `Z` suffix.
pub fn format_rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
