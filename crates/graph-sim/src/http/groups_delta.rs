//! `GET /groups/delta` with `members@delta` (group-delta, concepts/delta-query-groups.md).
//!
//! - `$filter=id eq '…'` (joined with `or`, at most 50) is the only filter; `$select` picks
//!   properties, `id` always comes back, and `members` (or no `$select`) adds `members@delta`.
//! - The first round lists each group with all its direct members; later rounds (from the
//!   deltaLink) list the groups that changed: members added (plain) and removed (`"@removed":
//!   {"reason": "deleted"}`), and a deleted security group as `{"id", "@removed": {"reason":
//!   "deleted"}}`. Only direct members: nested groups appear as members of type group, and a
//!   change inside a nested group shows nowhere (Microsoft Q&A 848352), which is why clients
//!   that need transitive membership list `transitiveMembers` instead.
//! - A group with many members is split over pages, the group object repeated with the next
//!   members ("Paging through members in a large group"). Graph names no page size: here
//!   `Prefer: odata.maxpagesize` (default 100) caps the members of a page.
//!
//! Tokens carry their round (filter, selection, stamps, position) in themselves, opaque to
//! clients, so they never expire here.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::directory::Options;
use super::faulted::bad;
use super::respond::graph_error;
use crate::auth::Grant;
use crate::model::{Group, Seq, Store};

const DEFAULT_PAGE: usize = 100;
const MAX_FILTER_IDS: usize = 50;
/// Properties kept for groups here (`members` selects `members@delta`).
const PROPS: &[&str] = &[
    "id",
    "description",
    "displayName",
    "groupTypes",
    "mail",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
];

/// A round's state, carried by its links.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    ids: Option<Vec<String>>,
    select: Option<Vec<String>>,
    since: Seq,
    /// `None` in a deltaLink: the next round ends at the store's stamp when it starts.
    upto: Option<Seq>,
    /// Mid-round: the next group, and the last member of it already sent.
    group: Option<String>,
    after: Option<String>,
}

fn encode(s: &State) -> String {
    let raw = serde_json::to_vec(s).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode(t: &str) -> Option<State> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

/// `id eq 'a' or id eq 'b'`; `None` for any other filter.
fn filter_ids(f: &str) -> Option<Vec<String>> {
    f.split(" or ")
        .map(|clause| {
            let c = clause.trim();
            let (k, rest) = c.split_once(char::is_whitespace)?;
            let (op, v) = rest.trim().split_once(char::is_whitespace)?;
            let v = v.trim();
            (k.eq_ignore_ascii_case("id") && op.eq_ignore_ascii_case("eq"))
                .then(|| v.strip_prefix('\'')?.strip_suffix('\'').map(str::to_string))
                .flatten()
        })
        .collect()
}

/// One page of a groups delta round.
pub(super) fn page(
    store: &Store,
    grant: &Grant,
    opts: &Options,
    page_size: Option<usize>,
    ctx: &str,
    link_base: &str,
) -> Result<String, Box<Response>> {
    let token = opts
        .skip
        .as_deref()
        .or(opts.delta.as_deref())
        .filter(|t| !t.is_empty());
    let mut state = match token {
        Some(t) => decode(t).ok_or_else(|| Box::new(bad("Invalid delta token.")))?,
        None => initial(opts)?,
    };
    let upto = *state.upto.get_or_insert(store.seq);
    let members = state
        .select
        .as_ref()
        .is_none_or(|s| s.iter().any(|p| p.eq_ignore_ascii_case("members")));
    let budget = page_size.unwrap_or(DEFAULT_PAGE).clamp(1, 999);
    let mut groups: Vec<&Group> = store
        .groups
        .values()
        .filter(|g| g.tenant == grant.tenant)
        .filter(|g| {
            state
                .ids
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i.eq_ignore_ascii_case(&g.id)))
        })
        .filter(|g| state.group.as_ref().is_none_or(|from| &g.id >= from))
        .collect();
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    let mut value = Vec::new();
    let mut used = 0;
    let mut next: Option<(String, Option<String>)> = None;
    for g in groups {
        if used >= budget {
            next = Some((g.id.clone(), None));
            break;
        }
        let after = state
            .after
            .as_ref()
            .filter(|_| state.group.as_deref() == Some(g.id.as_str()));
        let Some((obj, entries)) = change(g, state.since, upto, &state.select) else {
            continue;
        };
        let entries: Vec<(String, Value)> = if members {
            entries
                .into_iter()
                .filter(|(id, _)| after.is_none_or(|a| id > a))
                .collect()
        } else {
            vec![]
        };
        let room = budget - used;
        let more = entries.len() > room;
        let sent: Vec<(String, Value)> = entries.into_iter().take(room).collect();
        used += sent.len().max(1);
        let mut obj = obj;
        if !sent.is_empty() {
            let last = sent.last().map(|(id, _)| id.clone());
            obj.insert(
                "members@delta".into(),
                Value::Array(sent.into_iter().map(|(_, v)| v).collect()),
            );
            if more {
                next = Some((g.id.clone(), last));
            }
        } else if after.is_some() {
            // Every member of this group was sent on earlier pages.
            continue;
        }
        value.push(Value::Object(obj));
        if next.is_some() {
            break;
        }
    }
    let (name, link_state) = match next {
        Some((group, after)) => (
            "@odata.nextLink",
            State {
                group: Some(group),
                after,
                ..state.clone()
            },
        ),
        None => (
            "@odata.deltaLink",
            State {
                since: upto,
                upto: None,
                group: None,
                after: None,
                ..state.clone()
            },
        ),
    };
    let param = if name == "@odata.nextLink" {
        "$skiptoken"
    } else {
        "$deltatoken"
    };
    let mut out = Map::new();
    out.insert("@odata.context".into(), format!("{ctx}groups").into());
    out.insert(
        name.into(),
        format!("{link_base}?{param}={}", encode(&link_state)).into(),
    );
    out.insert("value".into(), Value::Array(value));
    Ok(Value::Object(out).to_string())
}

/// The state of an initial request, after checking its `$filter` and `$select`.
fn initial(opts: &Options) -> Result<State, Box<Response>> {
    let ids = match opts.filter.as_deref() {
        None => None,
        Some(f) => match filter_ids(f) {
            Some(ids) if ids.len() <= MAX_FILTER_IDS => Some(ids),
            Some(_) => {
                return Err(Box::new(bad(&format!(
                    "At most {MAX_FILTER_IDS} ids can be filtered."
                ))))
            }
            // Simulator wording; group-delta: "The only supported $filter expression is for
            // tracking changes on a specific object: $filter=id+eq+{value}".
            None => return Err(Box::new(graph_error(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                "Unsupported query: delta supports only $filter=id eq '{id}' [or id eq '{id}' …].",
            ))),
        },
    };
    if let Some(sel) = &opts.select {
        if let Some(p) = sel.iter().find(|p| {
            !p.eq_ignore_ascii_case("members") && !PROPS.iter().any(|k| k.eq_ignore_ascii_case(p))
        }) {
            return Err(Box::new(graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!("Could not find a property named '{p}' on type 'microsoft.graph.group'."),
            )));
        }
    }
    Ok(State {
        ids,
        select: opts.select.clone(),
        since: 0,
        upto: None,
        group: None,
        after: None,
    })
}

/// `members@delta` entries by member id.
type Entries = Vec<(String, Value)>;

/// What a round (since, upto] reports of a group: its object and its member entries (by
/// member id), or `None` when nothing of it changed. Memberships changed after `upto` wait
/// for the next round, which reports their latest state.
fn change(
    g: &Group,
    since: Seq,
    upto: Seq,
    select: &Option<Vec<String>>,
) -> Option<(Map<String, Value>, Entries)> {
    if g.created > upto {
        return None;
    }
    if let Some(d) = g.deleted.filter(|d| *d <= upto) {
        // Reported once, to rounds that had seen the group.
        if d > since && g.created <= since {
            let mut obj = Map::new();
            obj.insert("id".into(), g.id.clone().into());
            obj.insert("@removed".into(), json!({"reason": "deleted"}));
            return Some((obj, vec![]));
        }
        return None;
    }
    let new = g.created > since;
    let entries: Vec<(String, Value)> = g
        .members
        .iter()
        .filter(|(_, m)| m.seq <= upto && if new { m.live } else { m.seq > since })
        .map(|(id, m)| {
            let mut v = json!({"@odata.type": m.kind.odata_type(), "id": id});
            if !m.live {
                v["@removed"] = json!({"reason": "deleted"});
            }
            (id.clone(), v)
        })
        .collect();
    if !new && entries.is_empty() {
        return None;
    }
    Some((properties(g, select), entries))
}

fn properties(g: &Group, select: &Option<Vec<String>>) -> Map<String, Value> {
    let wanted: BTreeSet<&str> = match select {
        Some(s) => PROPS
            .iter()
            .copied()
            .filter(|k| *k == "id" || s.iter().any(|p| p.eq_ignore_ascii_case(k)))
            .collect(),
        None => PROPS.iter().copied().collect(),
    };
    wanted
        .into_iter()
        .map(|k| {
            let v = match k {
                "id" => g.id.clone().into(),
                "displayName" => g.display_name.clone().into(),
                "mailNickname" => g.mail_nickname.clone().into(),
                "groupTypes" => json!([]),
                "mailEnabled" => false.into(),
                "securityEnabled" => true.into(),
                _ => Value::Null,
            };
            (k.to_string(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_id_filters_are_understood() {
        assert_eq!(
            filter_ids("id eq 'a' or ID EQ 'b'"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(filter_ids("displayName eq 'x'"), None);
        assert_eq!(filter_ids("id eq a"), None);
    }
}
