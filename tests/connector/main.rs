//! The connector end to end: the Graph simulator over HTTP and a real Apache Kafka broker.

mod chaos;
mod common;
mod connect_client;
pub mod crash;
mod e2e;
mod eventhub;
mod fleet;
mod group_crash;
mod groups;
mod hardening;
mod ids;
mod links;
mod notifications;
mod ops;
mod oversize;
mod paging;
mod readiness;
mod reconcile;
mod rolling;
mod scale;
mod secure;
mod shutdown;
mod users;
