//! A group's `members` and `transitiveMembers`, maybe cast to users or groups
//! (group-list-members, group-list-transitivemembers), in pages of `$top`.
//!
//! The transitive list is flat: a user reached through several nested groups is listed once
//! ("returns a flat list of all nested members"). Older versions of the page required
//! `ConsistencyLevel: eventual` and `$count=true` for an OData cast; the current one says
//! "OData cast is enabled" without them, so casts work either way here. `$filter`, `$search`
//! and `$orderby` are not simulated (ignored); members come in id order.

use axum::http::{StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::directory::{
    checked, context, group_object, live_group, not_found, user_object, Cast, Options, GROUP_PROPS,
    USER_DEFAULT, USER_MORE,
};
use super::faulted::bad;
use super::respond::graph_error;
use crate::auth::Grant;
use crate::model::{MemberKind, Store};
use crate::permissions::Need;

/// A group's member list, direct or transitive, maybe cast to one type.
pub(super) struct MemberList {
    pub transitive: bool,
    pub cast: Option<Cast>,
    /// `ConsistencyLevel: eventual` was sent: `$count=true` is honoured (aad-advanced-queries:
    /// without it `$count` is "silently" ignored).
    pub consistent: bool,
}

/// Page sizes of directory lists: "The default and maximum page sizes are 100 and 999
/// objects respectively" (group-list-transitivememberof, group-list-memberof; the
/// transitiveMembers page itself names no numbers).
const DEFAULT_TOP: usize = 100;
const MAX_TOP: usize = 999;

impl MemberList {
    #[allow(clippy::too_many_arguments)]
    pub fn page(
        &self,
        store: &Store,
        grant: &Grant,
        group: &str,
        opts: &Options,
        uri: &Uri,
        ctx: &str,
        link_base: &str,
    ) -> Result<String, Box<Response>> {
        let g = live_group(store, grant, group)?;
        let (known, entity): (&[&[&str]], &str) = match self.cast {
            Some(Cast::User) => (&[USER_DEFAULT, USER_MORE], "user"),
            Some(Cast::Group) => (&[GROUP_PROPS], "group"),
            _ => (&[USER_DEFAULT, USER_MORE, GROUP_PROPS], "directoryObject"),
        };
        let select = checked(&opts.select, known, entity)?;
        let top = match opts.top.as_deref() {
            None => DEFAULT_TOP,
            Some(t) => match t.parse::<usize>() {
                Ok(n) if (1..=MAX_TOP).contains(&n) => n,
                // Simulator wording: the range is the documented one.
                _ => {
                    return Err(Box::new(graph_error(
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        &format!("Invalid page size specified: '{t}'. Must be between 1 and {MAX_TOP} inclusive."),
                    )))
                }
            },
        };
        let offset = match opts.skip.as_deref() {
            None => 0,
            Some(t) => decode_skip(t).ok_or_else(|| Box::new(bad("Invalid $skiptoken.")))?,
        };
        let members: Vec<(String, MemberKind)> = if self.transitive {
            store
                .transitive_members(&g.id)
                .map_err(|_| not_found(group))?
        } else {
            g.live_members()
                .map(|(id, m)| (id.clone(), m.kind))
                .collect()
        };
        let members: Vec<(String, MemberKind)> = members
            .into_iter()
            .filter(|(_, k)| match self.cast {
                None => true,
                Some(Cast::User) => *k == MemberKind::User,
                Some(Cast::Group) => *k == MemberKind::Group,
                Some(Cast::Other) => false,
            })
            .collect();
        let limited = !Need::Users.granted(&grant.roles);
        let value: Vec<Value> = members
            .iter()
            .skip(offset)
            .take(top)
            .filter_map(|(id, kind)| self.entry(store, id, *kind, select, limited))
            .collect();
        let set = match self.cast {
            Some(Cast::User) => "users",
            Some(Cast::Group) => "groups",
            _ => "directoryObjects",
        };
        let mut out = Map::new();
        out.insert("@odata.context".into(), context(ctx, set, select).into());
        if opts.count && self.consistent {
            out.insert("@odata.count".into(), members.len().into());
        }
        if offset + top < members.len() {
            out.insert(
                "@odata.nextLink".into(),
                next_link(link_base, uri, &encode_skip(offset + top)).into(),
            );
        }
        out.insert("value".into(), Value::Array(value));
        Ok(Value::Object(out).to_string())
    }

    /// One member: `@odata.type` on uncast lists (group-list-members; the cast examples
    /// carry none), except that a member the app may not read shows only its type and id.
    fn entry(
        &self,
        store: &Store,
        id: &str,
        kind: MemberKind,
        select: Option<&[String]>,
        limited: bool,
    ) -> Option<Value> {
        let (mut obj, limited) = match kind {
            MemberKind::User => {
                let u = store.users.get(id)?;
                (user_object(u, select, limited), limited)
            }
            MemberKind::Group => (group_object(store.group(id).ok()?, select), false),
        };
        if self.cast.is_none() || limited {
            let mut typed = Map::new();
            typed.insert("@odata.type".into(), kind.odata_type().into());
            if limited {
                typed.insert("id".into(), id.into());
            }
            typed.extend(obj);
            obj = typed;
        }
        Some(Value::Object(obj))
    }
}

/// The request's own query with a new `$skiptoken`, as directory nextLinks keep `$select`
/// and `$top`.
fn next_link(link_base: &str, uri: &Uri, token: &str) -> String {
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split('=').next().unwrap_or("");
            let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
            !k.eq_ignore_ascii_case("$skiptoken")
        })
        .collect();
    let mut q = kept.join("&");
    if !q.is_empty() {
        q.push('&');
    }
    format!("{link_base}?{q}$skiptoken={token}")
}

const SKIP_PREFIX: &str = "RFNwdAIAAQAAA";

/// An opaque skip token holding a list position.
fn encode_skip(offset: usize) -> String {
    let raw = serde_json::json!({"o": offset}).to_string();
    format!(
        "{SKIP_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn decode_skip(token: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.strip_prefix(SKIP_PREFIX)?)
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v["o"].as_u64().map(|o| o as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_tokens_round_trip_and_links_keep_the_query() {
        assert_eq!(decode_skip(&encode_skip(250)), Some(250));
        assert_eq!(decode_skip("nonsense"), None);
        let uri: Uri = "/v1.0/groups/g/members?$select=id&$top=2&%24skiptoken=old"
            .parse()
            .unwrap();
        assert_eq!(
            next_link("http://h/v1.0/groups/g/members", &uri, "T"),
            "http://h/v1.0/groups/g/members?$select=id&$top=2&$skiptoken=T"
        );
    }
}
