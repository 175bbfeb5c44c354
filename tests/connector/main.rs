//! The connector end to end: the Graph simulator over HTTP and a real Apache Kafka broker.

mod chaos;
mod common;
pub mod crash;
mod e2e;
mod ops;
mod oversize;
mod secure;
mod shutdown;
