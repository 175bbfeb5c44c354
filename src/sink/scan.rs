//! A partition's live records found by reading its whole topic: how its reconciliation
//! state is first built when a worker upgraded from a version without one has none (once
//! per partition, never again). Blocking: call it off the async executor.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::Message;

use super::readback::read_to_end;
use super::{Reason, SinkError, SinkOptions};
use crate::live::content_hash;
use crate::source::Loc;

/// The keys starting with `prefix` that are live (not tombstoned) in `topic`, as a
/// `read_committed` consumer sees it now, each with its value's content hash and where its
/// latest record is.
pub fn live_records(
    opts: &SinkOptions,
    topic: &str,
    prefix: &[u8],
    timeout: Duration,
) -> Result<HashMap<Vec<u8>, (u64, Loc)>, SinkError> {
    let mut live = HashMap::new();
    let group = format!("{}-state-seed", opts.connector);
    read_to_end(&opts.consumer_config(), &group, topic, timeout, |m| {
        let Some(key) = m.key().filter(|k| k.starts_with(prefix)) else {
            return;
        };
        match (m.payload(), Loc::new(m.partition(), m.offset())) {
            (Some(v), Some(loc)) => {
                live.insert(key.to_vec(), (content_hash(v), loc));
            }
            _ => {
                live.remove(key);
            }
        }
    })
    .map_err(|e| SinkError::Aborted(Reason::from_cause(e)))?;
    Ok(live)
}
