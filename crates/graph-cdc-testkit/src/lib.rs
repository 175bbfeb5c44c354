//! graph-cdc's test bed, shared by the product's tests, benchmarks and chaos suite; a
//! dev-dependency only, never part of the product.
//!
//! ```text
//!   broker.rs    a real Apache Kafka broker (KRaft, from Maven Central): plaintext,
//!                SASL_SSL/SCRAM and mTLS listeners, ACLs; one per test run or per process
//!   certs.rs     the CA and certificates of its TLS listeners (openssl CLI)
//!   eventhub.rs  a stand-in for Azure Event Hubs: the simulator's outbox relayed to Kafka
//!   fixtures.rs  a fixed client certificate for Graph's certificate credential
//!   harness.rs   the test app in a simulator, worker specs from the connector's defaults,
//!                a worker in this process, counters, topics read back read_committed
//!   bin/kafka-broker.rs  the broker for a whole `scripts/test.sh` run
//! ```

pub mod broker;
pub mod certs;
pub mod eventhub;
pub mod fixtures;
pub mod harness;
