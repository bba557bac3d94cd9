//! Scratchpads (being written).
