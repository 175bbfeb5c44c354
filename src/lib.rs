#![recursion_limit = "256"]
//! graph-cdc
pub mod config;
pub mod demo;
pub mod graph;
pub mod metrics;
pub mod offsets;
pub mod server;
pub mod sim;
pub mod sink;
pub mod source;
pub mod testkit;
pub mod worker;
