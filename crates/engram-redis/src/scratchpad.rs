//! Scratchpads in Redis (being written).
