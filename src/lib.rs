//! graph-cdc
pub mod sim;
