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
    /// `POST …/partitions/resync` with `{"partition": {…}}` or `{"all": true}`.
    Resync(Resync),
    /// `PATCH …/offsets`: only while stopped; at least one partition.
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
    /// What a resync body must be.
    pub const BODY: &'static str =
        r#"{"partition": {…}} for one partition or {"all": true} for every one"#;

    /// The body `{"partition": {…}}` (one partition) or `{"all": true}` (every partition):
    /// resyncing everything is asked for explicitly, never the reading of an empty body.
    pub fn from_body(body: &Value) -> Result<Self, BadRequest> {
        let expected = || format!("expected {}", Self::BODY);
        let Some(fields) = body.as_object() else {
            return Err(BadRequest(expected()));
        };
        if let Some(k) = fields.keys().find(|k| *k != "partition" && *k != "all") {
            return Err(BadRequest(format!("unknown field {k:?}: {}", expected())));
        }
        match (fields.get("partition"), fields.get("all")) {
            (Some(p), None) => match partition_of(p) {
                Ok(p) => Ok(Resync { partition: Some(p) }),
                Err(BadRequest(m)) => Err(BadRequest(format!("partition: {m}; {}", expected()))),
            },
            (None, Some(Value::Bool(true))) => Ok(Resync { partition: None }),
            _ => Err(BadRequest(expected())),
        }
    }
}

/// Writes offsets (`None` resets a partition).
#[derive(Debug, Clone)]
pub struct AlterOffsets(pub OffsetWrites);

impl AlterOffsets {
    /// What an offsets body must be.
    pub const BODY: &'static str = r#"{"offsets": [{"partition": {…}, "offset": {…} or null}, …]}"#;

    /// The body `{"offsets":[{"partition":{…},"offset":{…} or null}]}` (KIP-875): at least
    /// one entry (as in Connect), each with exactly those two fields (`"offset": null` resets
    /// the partition, and must be said), no partition twice.
    pub fn from_body(body: &Value) -> Result<Self, BadRequest> {
        let expected = || format!("expected {}", Self::BODY);
        let Some(fields) = body.as_object() else {
            return Err(BadRequest(expected()));
        };
        if let Some(k) = fields.keys().find(|k| *k != "offsets") {
            return Err(BadRequest(format!("unknown field {k:?}: {}", expected())));
        }
        let Some(list) = fields.get("offsets").and_then(Value::as_array) else {
            return Err(BadRequest(expected()));
        };
        if list.is_empty() {
            return Err(BadRequest(
                "Partitions / offsets need to be provided for an alter offsets request".into(),
            ));
        }
        let mut writes = Vec::with_capacity(list.len());
        let mut seen = std::collections::BTreeSet::new();
        for (i, item) in list.iter().enumerate() {
            let entry = item.as_object().filter(|o| {
                o.len() == 2 && o.contains_key("partition") && o.contains_key("offset")
            });
            let Some(entry) = entry else {
                return Err(BadRequest(format!(
                    "offsets[{i}]: expected {{\"partition\": {{…}}, \"offset\": {{…}} or null}}"
                )));
            };
            let p = partition_of(&entry["partition"])
                .map_err(|BadRequest(m)| BadRequest(format!("offsets[{i}].partition: {m}")))?;
            let o = match &entry["offset"] {
                Value::Null => None,
                v => Some(
                    SourceOffset::deserialize(v)
                        .map_err(|e| BadRequest(format!("offsets[{i}].offset: {e}")))?,
                ),
            };
            if !seen.insert(p.clone()) {
                return Err(BadRequest(format!(
                    "offsets[{i}].partition: {p} is listed twice"
                )));
            }
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
    fn resync_of_everything_is_explicit() {
        let all = Resync { partition: None };
        assert_eq!(Resync::from_body(&json!({"all": true})).unwrap(), all);
        for body in [
            json!({}),
            json!(null),
            json!([]),
            json!({"all": false}),
            json!({"all": "yes"}),
            json!({"partition": null}),
            json!({"all": true, "partition": {"kind": "task_lists", "user": "a@b.c"}}),
            json!({"everything": true}),
        ] {
            let e = Resync::from_body(&body).unwrap_err();
            assert!(e.0.contains(r#"{"all": true}"#), "{body}: {e}");
        }
        let one = Resync::from_body(&json!({"partition": {"kind": "task_lists", "user": "a@b.c"}}))
            .unwrap();
        assert_eq!(
            one.partition,
            Some(PartitionId::TaskLists {
                user: "a@b.c".into()
            })
        );
        let bad = Resync::from_body(&json!({"partition": {"kind": "mail"}}));
        assert!(bad.is_err());
    }

    #[test]
    fn alter_offsets_reads_writes_and_resets() {
        let body = json!({"offsets": [
            {"partition": {"kind": "calendar_list", "user": "a@b.c"}, "offset": {"round": 7}},
            {"partition": {"kind": "task_lists", "user": "a@b.c"}, "offset": null},
        ]});
        let AlterOffsets(writes) = AlterOffsets::from_body(&body).unwrap();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].1.as_ref().map(|o| o.round), Some(7));
        assert_eq!(writes[1].1, None);
        for body in [json!(null), json!({}), json!({"offsets": {}}), json!([])] {
            let e = AlterOffsets::from_body(&body).unwrap_err();
            assert!(e.0.starts_with("expected {\"offsets\""), "{body}: {e}");
        }
        let e = AlterOffsets::from_body(&json!({"offsets": []})).unwrap_err();
        assert!(
            e.0.starts_with("Partitions / offsets need to be provided"),
            "{e}"
        );
        let e = AlterOffsets::from_body(&json!({"offsets": [
            {"partition": {"kind": "calendar_list", "user": "a@b.c"}, "offset": {"round": "x"}}
        ]}))
        .unwrap_err();
        assert!(e.0.starts_with("offsets[0].offset: "), "{e}");
        let e = AlterOffsets::from_body(&json!({"offsets": [{"partition": {}, "offset": null}]}))
            .unwrap_err();
        assert!(e.0.starts_with("offsets[0].partition: "), "{e}");
        // The offset must be said, even when null; nothing else may be there.
        let p = json!({"kind": "task_lists", "user": "a@b.c"});
        for item in [
            json!({"partition": p}),
            json!({"partition": p, "offset": null, "x": 1}),
            json!("x"),
        ] {
            let e = AlterOffsets::from_body(&json!({"offsets": [item]})).unwrap_err();
            assert!(e.0.starts_with("offsets[0]: expected"), "{e}");
        }
        let e = AlterOffsets::from_body(&json!({"offsets": [
            {"partition": p, "offset": null}, {"partition": p, "offset": {"round": 1}}
        ]}))
        .unwrap_err();
        assert!(e.0.contains("listed twice"), "{e}");
        let e = AlterOffsets::from_body(
            &json!({"offsets": [{"partition": p, "offset": null}], "x": 1}),
        )
        .unwrap_err();
        assert!(e.0.starts_with("unknown field \"x\""), "{e}");
    }
}
