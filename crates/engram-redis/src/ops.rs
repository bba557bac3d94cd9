//! The operational tier in Redis (being written).
