//! Reading the offsets topic to its end, `read_committed`, at start.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;

use super::readback::{read_to_end, ReadError};
use crate::offsets::decode;
use crate::source::{PartitionId, SourceOffset};

/// Why the offsets could not be read.
pub type OffsetStoreError = ReadError;

/// Reads every committed offset of `connector` from `topic` (blocking: call it off the async
/// executor). `config` carries the bootstrap servers and any security options.
pub fn load_offsets(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    timeout: Duration,
) -> Result<HashMap<PartitionId, SourceOffset>, OffsetStoreError> {
    let mut out = HashMap::new();
    let group = format!("{connector}-offsets-reader");
    read_to_end(config, &group, topic, timeout, |m| {
        let Some(key) = m.key() else { return };
        match decode(key, m.payload()) {
            Ok(r) if r.connector == connector => match r.offset {
                Some(o) => {
                    out.insert(r.partition, o);
                }
                None => {
                    out.remove(&r.partition);
                }
            },
            Ok(_) => {}
            Err(why) => tracing::warn!(
                topic,
                partition = m.partition(),
                offset = m.offset(),
                why = %why,
                "skipping a record of the offsets topic"
            ),
        }
    })?;
    Ok(out)
}
