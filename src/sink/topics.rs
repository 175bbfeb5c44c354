//! Creating missing topics: the data topics, the offsets topic and the state topic, all
//! compacted, and the dead-letter topic.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{Reason, SinkError, SinkOptions};

/// The offsets topic's `segment.bytes` when it is created here.
pub const OFFSETS_SEGMENT_BYTES: &str = "104857600";

/// Creates each topic that does not exist yet (compacted). Existing topics are left alone.
pub async fn ensure_topics(
    opts: &SinkOptions,
    partitions: i32,
    replication: i32,
) -> Result<(), SinkError> {
    let mut names: Vec<(&str, i32)> = opts.topics.all().iter().map(|t| (*t, partitions)).collect();
    // The offsets topic is small and read whole at start: one partition keeps that fast.
    names.push((&opts.offsets_topic, 1));
    // The state topic is read whole at start too, but holds ~24 bytes per live item.
    names.push((&opts.state_topic, partitions));
    names.sort();
    names.dedup();
    let mut new: Vec<NewTopic> = names
        .iter()
        .map(|(n, p)| {
            let topic = NewTopic::new(n, *p, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact");
            if *n == opts.offsets_topic {
                // Every idle poll's deltaLink lands here (100,000 partitions at 60 s polls:
                // ~30 MB a minute) and only closed segments are compacted: with the default
                // 1 GB segments a worker taking shards would read up to ~2 GB. 100 MiB, as
                // Kafka's own `__consumer_offsets` (`offsets.topic.segment.bytes`).
                topic.set("segment.bytes", OFFSETS_SEGMENT_BYTES)
            } else {
                topic
            }
        })
        .collect();
    // Dead letters are a log to inspect, not a table: not compacted.
    if let Some(dlq) = &opts.errors.dead_letter_topic {
        new.push(
            NewTopic::new(dlq, partitions, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "delete"),
        );
    }
    create(opts, &new).await
}

/// Creates `topics`, leaving those that exist alone.
async fn create(opts: &SinkOptions, topics: &[NewTopic<'_>]) -> Result<(), SinkError> {
    let admin: AdminClient<DefaultClientContext> = opts
        .admin_config()
        .create()
        .map_err(|e| SinkError::Setup(Reason::because("creating the admin client", e)))?;
    let results = admin
        .create_topics(
            topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| SinkError::Setup(Reason::because("creating topics", e)))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(SinkError::Setup(Reason::because(
                    format_args!("creating topic '{t}'"),
                    KafkaError::AdminOp(code),
                )))
            }
        }
    }
    Ok(())
}

/// Creates the shards topic (`kafka.shards_topic`, one partition per shard, no records: the
/// workers' group is assigned its partitions) and the control topic if missing. An existing one is left
/// alone: the worker checks its partition count against `worker.shards`.
pub async fn ensure_shards_topic(
    opts: &SinkOptions,
    topic: &str,
    shards: u32,
    control: &str,
    replication: i32,
) -> Result<(), SinkError> {
    let t = NewTopic::new(topic, shards as i32, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    // The control topic: the connectors' target states (`control.rs`), one partition.
    let c = NewTopic::new(control, 1, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    create(opts, &[t, c]).await
}
