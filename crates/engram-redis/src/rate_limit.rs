//! Rate limits in Redis (being written).
