//! The operational tier (being written).
