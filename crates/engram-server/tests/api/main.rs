//! API tests: the real server on port 0 over a fresh SQLite data directory, spoken to over
//! HTTP with reqwest. One binary (this file and its modules) so it links once.

mod auth;
mod helpers;
mod memories;
mod ops;
mod rate_limit;
mod scratchpad;
mod search;
mod validation;
mod working;
