#![recursion_limit = "256"]
//! graph-cdc
pub mod sim;
pub mod source;
