#![recursion_limit = "256"]
//! graph-cdc
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod graph;
pub mod metrics;
pub mod offsets;
pub mod server;
pub mod sink;
pub mod source;
pub mod worker;
