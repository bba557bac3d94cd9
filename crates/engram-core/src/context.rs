//! Context assembly (being written).
