//! bursar: an LLM API key gateway. Virtual keys in front of real provider
//! keys, with scope, limits, usage, cost and an audit log.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod counters;
pub mod gateway;
pub mod keys;
pub mod policy;
pub mod providers;
pub mod store;
pub mod usage;
pub mod util;
