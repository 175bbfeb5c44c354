//! Reading back which keys a partition has in its topic (for the deletions a full resync
//! cannot report). Blocking: call it off the async executor.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::message::Message;

use super::readback::read_to_end;
use super::{Reason, SinkError, SinkOptions};

/// The keys starting with `prefix` that are live (not tombstoned) in `topic`, as a
/// `read_committed` consumer sees it now. Reads the whole topic: full resyncs are rare.
pub fn live_keys(
    opts: &SinkOptions,
    topic: &str,
    prefix: &[u8],
    timeout: Duration,
) -> Result<HashSet<Vec<u8>>, SinkError> {
    let mut live = HashSet::new();
    let group = format!("{}-resync-scan", opts.connector);
    read_to_end(&opts.consumer_config(), &group, topic, timeout, |m| {
        let Some(key) = m.key().filter(|k| k.starts_with(prefix)) else {
            return;
        };
        if m.payload().is_some() {
            live.insert(key.to_vec());
        } else {
            live.remove(key);
        }
    })
    .map_err(|e| SinkError::Aborted(Reason::from_cause(e)))?;
    Ok(live)
}
