//! Test-bed parts shared by tests, benchmarks and the chaos suite (not used by the worker).

pub mod broker;
pub mod certs;
pub mod fixtures;
