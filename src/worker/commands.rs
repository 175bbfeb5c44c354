//! Operator commands as typed values, each read from its REST request (path, query or body)
//! by its own parser; `control.rs` applies them.

use serde::Deserialize as _;
use serde_json::Value;

use crate::sink::committer::OffsetWrites;
use crate::source::{PartitionId, SourceOffset};

/// What an operator can ask of a running worker.
#[derive(Debug, Clone)]
pub enum Command {
    /// `PUT …/pause`: partitions stop fetching and keep their place.
    Pause,
    /// `PUT …/resume`: paused or stopped partitions go on (stopped ones from their committed
    /// offsets).
    Resume,
    /// `PUT …/stop`: partitions stop and their offsets are persisted; offsets may then be
    /// changed.
    Stop,
    /// `POST …/restart`, `POST …/tasks/{task}/restart`.
    Restart(Restart),
    /// `POST …/partitions/resync`.
    Resync(Resync),
    /// `PATCH …/offsets`: only while stopped.
    AlterOffsets(AlterOffsets),
    /// `DELETE …/offsets`: resets every partition's offset; only while stopped.
    ResetOffsets,
}

/// Why a request does not make a command (answered `400`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Restarts partitions from their committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// Every partition, or only the failed ones.
    All { only_failed: bool },
    /// One partition, by its task id ([`super::task_id`]).
    Task(u64),
}

/// The query of `POST /connectors/{name}/restart`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartQuery {
    #[serde(default)]
    pub only_failed: bool,
    /// Partitions are this connector's tasks, so a restart always restarts them.
    #[serde(default)]
    pub include_tasks: bool,
}

impl Restart {
    /// `POST /connectors/{name}/restart?onlyFailed=…&includeTasks=…`.
    pub fn from_query(q: &RestartQuery) -> Self {
        Restart::All {
            only_failed: q.only_failed,
        }
    }

    /// `POST /connectors/{name}/tasks/{task}/restart`.
    pub fn from_task(task: u64) -> Self {
        Restart::Task(task)
    }
}

/// Restarts the rounds of one or all partitions from the initial request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    /// `None`: every partition.
    pub partition: Option<PartitionId>,
}

impl Resync {
    /// The body `{"partition": {…}}`; no body, `{}` or a null partition: every partition.
    pub fn from_body(body: Option<&Value>) -> Result<Self, BadRequest> {
        let partition = match body.and_then(|b| b.get("partition")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(partition_of(v)?),
        };
        Ok(Resync { partition })
    }
}

/// Writes offsets (`None` resets a partition).
#[derive(Debug, Clone)]
pub struct AlterOffsets(pub OffsetWrites);

impl AlterOffsets {
    /// The body `{"offsets":[{"partition":{…},"offset":{…} or null}]}` (KIP-875).
    pub fn from_body(body: Option<&Value>) -> Result<Self, BadRequest> {
        let Some(list) = body
            .and_then(|b| b.get("offsets"))
            .and_then(Value::as_array)
        else {
            return Err(BadRequest(
                "expected {\"offsets\": [{\"partition\": {…}, \"offset\": {…}}]}".into(),
            ));
        };
        let mut writes = Vec::with_capacity(list.len());
        for item in list {
            let p = partition_of(&item["partition"])?;
            let o = match &item["offset"] {
                Value::Null => None,
                v => Some(
                    SourceOffset::deserialize(v).map_err(|e| BadRequest(format!("offset: {e}")))?,
                ),
            };
            writes.push((p, o));
        }
        Ok(AlterOffsets(writes))
    }
}

/// A partition identity from a request body.
fn partition_of(v: &Value) -> Result<PartitionId, BadRequest> {
    PartitionId::from_json(v).map_err(|e| BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restart_reads_its_query_or_task() {
        let q: RestartQuery = serde_json::from_value(json!({"onlyFailed": true})).unwrap();
        assert_eq!(Restart::from_query(&q), Restart::All { only_failed: true });
        assert_eq!(
            Restart::from_query(&RestartQuery::default()),
            Restart::All { only_failed: false }
        );
        assert_eq!(Restart::from_task(42), Restart::Task(42));
    }

    #[test]
    fn resync_reads_an_optional_partition() {
        let all = Resync { partition: None };
        assert_eq!(Resync::from_body(None).unwrap(), all);
        assert_eq!(Resync::from_body(Some(&json!({}))).unwrap(), all);
        assert_eq!(
            Resync::from_body(Some(&json!({"partition": null}))).unwrap(),
            all
        );
        let one = Resync::from_body(Some(
            &json!({"partition": {"kind": "task_lists", "user": "a@b.c"}}),
        ))
        .unwrap();
        assert_eq!(
            one.partition,
            Some(PartitionId::TaskLists {
                user: "a@b.c".into()
            })
        );
        let bad = Resync::from_body(Some(&json!({"partition": {"kind": "mail"}})));
        assert!(bad.is_err());
    }

    #[test]
    fn alter_offsets_reads_writes_and_resets() {
        let body = json!({"offsets": [
            {"partition": {"kind": "calendar_list", "user": "a@b.c"}, "offset": {"round": 7}},
            {"partition": {"kind": "task_lists", "user": "a@b.c"}, "offset": null},
        ]});
        let AlterOffsets(writes) = AlterOffsets::from_body(Some(&body)).unwrap();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].1.as_ref().map(|o| o.round), Some(7));
        assert_eq!(writes[1].1, None);
        let e = AlterOffsets::from_body(None).unwrap_err();
        assert!(e.0.starts_with("expected {\"offsets\""), "{e}");
        let e = AlterOffsets::from_body(Some(&json!({"offsets": [
            {"partition": {"kind": "calendar_list", "user": "a@b.c"}, "offset": {"round": "x"}}
        ]})))
        .unwrap_err();
        assert!(e.0.starts_with("offset: "), "{e}");
        assert!(AlterOffsets::from_body(Some(&json!({"offsets": [{"partition": {}}]}))).is_err());
    }
}
