//! What each partition kind requests (NOTES.md, endpoint table): its [`Route`], which builds
//! the initial request of a round and tells whether a link from outside (the offsets topic,
//! `PATCH …/offsets`) addresses the partition's own resource.
//!
//! A link is a bearer-token request the partition will make under its own keys: a link of
//! another mailbox, calendar or list would write that resource's items as this partition's.
//! Graph's own links are checked the way Graph reads them (`microsoft-graph-docs-contrib`):
//! path segments' case does not matter (the beta event-delta example answers
//! `…/me/calendarview/delta` to a request for `calendarView`), percent-encoding does not
//! matter (`%40` is `@`, `%3D` is `=`), user principal names and object ids compare without
//! case; calendar and list ids are compared exactly (Outlook ids are case-sensitive base64).
//! The state tokens (`$skiptoken`, `$deltatoken`) are opaque: Graph encodes every other
//! parameter of the initial request into them (todotask-delta.md, "Query parameters"), so a
//! link carries only those, plus the window of a calendar view's initial request.

use chrono::{DateTime, Utc};
use url::Url;

use super::error::GraphError;
use crate::source::PartitionId;
use crate::window::{Window, WindowSpec};

/// One path segment of a route after the API version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A fixed name (`users`, `calendarView`, `delta`): compared without case.
    Name(&'static str),
    /// The user: a principal name or an object id, compared without case.
    User(String),
    /// A calendar id: compared exactly.
    Calendar(String),
    /// A To Do list id: compared exactly.
    List(String),
    /// A group's object id: compared without case, as Graph compares object ids.
    Group(String),
}

/// Where a partition's requests go: its Graph host, API version and path.
#[derive(Debug, Clone)]
pub struct Route {
    host: Url,
    version: &'static str,
    segments: Vec<Segment>,
    /// A calendar view's window in force, as the partition identity gives it (fixed) or as
    /// [`Route::in_window`] sets it (rolling); `None` for other kinds, and for a rolling view
    /// whose window is not known (its links' window is then not checked).
    window: Option<(String, String)>,
    /// A directory listing (group members): the query of its initial request, which its
    /// nextLinks repeat beside their `$skiptoken` (`$select`, `$top`).
    listing: Option<&'static [(&'static str, &'static str)]>,
}

/// The query of a group members listing: the fields record values carry, and Graph's
/// largest page of directory objects (999).
const MEMBERS_QUERY: &[(&str, &str)] = &[("$select", "id,userPrincipalName,mail"), ("$top", "999")];

/// Why a link does not address a partition's own resource. The texts name the parts that
/// differ, never a state token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkMismatch {
    #[error("not an absolute URL")]
    NotAUrl,
    #[error("it carries user credentials")]
    Credentials,
    #[error("it points at {found}, not the configured Graph host {expected}")]
    Host { expected: String, found: String },
    #[error("it is for API version {found}, not {expected}")]
    Version { expected: String, found: String },
    #[error("it is for user {found}, not {expected}")]
    User { expected: String, found: String },
    #[error("it is for {what} {found}, not {expected}")]
    Resource {
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("its path {found} is not this partition's route {expected}")]
    Route { expected: String, found: String },
    #[error("its {param} is {found}, not the window's {expected}")]
    Window {
        param: &'static str,
        expected: String,
        found: String,
    },
    #[error("it has a query parameter {0} Graph's links do not carry")]
    Query(String),
}

/// `graph_host` parsed, and its origin serialised, once per thread: a reader is made and a
/// link checked at every poll of a parked partition (`worker/scheduler.rs`), and parsing the
/// same host each time cost a few percent of an idle worker's CPU (perf). `f` gets both.
fn with_host<R>(graph_host: &str, f: impl FnOnce(&Url, &str) -> R) -> Result<R, GraphError> {
    type Cached = Option<(String, Url, String)>;
    thread_local! {
        static LAST: std::cell::RefCell<Cached> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if last.as_ref().is_none_or(|(h, ..)| h != graph_host) {
            let url = Url::parse(graph_host).map_err(|source| GraphError::Host {
                host: graph_host.to_string(),
                source,
            })?;
            let origin = url.origin().ascii_serialization();
            *last = Some((graph_host.to_string(), url, origin));
        }
        let (_, url, origin) = last.as_ref().expect("cached just above");
        Ok(f(url, origin))
    })
}

fn parsed_host(graph_host: &str) -> Result<Url, GraphError> {
    with_host(graph_host, |url, _| url.clone())
}

impl Route {
    /// The route of partition `id` on `graph_host` (e.g. `https://graph.microsoft.com`).
    ///
    /// Primary-calendar views use v1.0; views of another calendar and calendar lists exist
    /// only in beta.
    pub fn new(graph_host: &str, id: &PartitionId) -> Result<Self, GraphError> {
        use Segment::{Calendar, Group, List, Name, User};
        let host = parsed_host(graph_host)?;
        if host.cannot_be_a_base() {
            return Err(GraphError::Url(format!(
                "{graph_host} cannot be a base URL"
            )));
        }
        let user = |u: &str| [Name("users"), User(u.to_string())];
        let listing = matches!(id, PartitionId::GroupMembers { .. }).then_some(MEMBERS_QUERY);
        let (version, segments, window) = match id {
            PartitionId::CalendarView {
                user: u,
                calendar,
                window,
            } => {
                let spec = WindowSpec::parse(window).map_err(GraphError::Url)?;
                // A fixed window is requested as the identity spells it; a rolling one is
                // set by whoever knows the time (`in_window`).
                let window = (!spec.rolls())
                    .then(|| window.split_once('/'))
                    .flatten()
                    .map(|(s, e)| (s.to_string(), e.to_string()));
                let view = [Name("calendarView"), Name("delta")];
                if calendar.eq_ignore_ascii_case("primary") {
                    ("v1.0", [&user(u)[..], &view].concat(), window)
                } else {
                    let cal = [Name("calendars"), Calendar(calendar.clone())];
                    ("beta", [&user(u)[..], &cal, &view].concat(), window)
                }
            }
            PartitionId::CalendarList { user: u } => (
                "beta",
                [&user(u)[..], &[Name("calendars"), Name("delta")]].concat(),
                None,
            ),
            PartitionId::TaskLists { user: u } => (
                "v1.0",
                [&user(u)[..], &[Name("todo"), Name("lists"), Name("delta")]].concat(),
                None,
            ),
            PartitionId::Tasks { user: u, list } => (
                "v1.0",
                [
                    &user(u)[..],
                    &[Name("todo"), Name("lists"), List(list.clone())],
                    &[Name("tasks"), Name("delta")],
                ]
                .concat(),
                None,
            ),
            // "List group transitive members": a user reached through nested groups is
            // listed once; the cast keeps devices, contacts and groups out.
            PartitionId::GroupMembers { group } => (
                "v1.0",
                vec![
                    Name("groups"),
                    Group(group.clone()),
                    Name("transitiveMembers"),
                    Name("microsoft.graph.user"),
                ],
                None,
            ),
        };
        Ok(Self {
            host,
            version,
            segments,
            window,
            listing,
        })
    }

    /// The route of a calendar view over `window` (the window in force of a rolling view).
    pub fn in_window(mut self, window: Window) -> Self {
        if self.window.is_some() || self.segments.contains(&Segment::Name("calendarView")) {
            let w = window.to_string();
            self.window = w
                .split_once('/')
                .map(|(s, e)| (s.to_string(), e.to_string()));
        }
        self
    }

    /// The initial delta request of a round.
    pub fn initial_url(&self) -> String {
        self.url().to_string()
    }

    fn url(&self) -> Url {
        let mut url = self.host.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(self.version);
            path.extend(self.segments.iter().map(|s| match s {
                Segment::Name(n) => *n,
                Segment::User(v) | Segment::Calendar(v) | Segment::List(v) | Segment::Group(v) => {
                    v.as_str()
                }
            }));
        }
        for (k, v) in self.listing.unwrap_or_default() {
            url.query_pairs_mut().append_pair(k, v);
        }
        if let Some((start, end)) = &self.window {
            url.query_pairs_mut()
                .append_pair("startDateTime", start)
                .append_pair("endDateTime", end);
        }
        url
    }

    /// Whether `link` addresses this partition's own resource: the configured Graph host
    /// (scheme, host and port), its path prefix, the API version, the user, the calendar or
    /// list, the route, and for a calendar view the window when the link names one. The
    /// state tokens are not looked into.
    pub fn owns_link(&self, link: &str) -> Result<(), LinkMismatch> {
        let url = Url::parse(link).map_err(|_| LinkMismatch::NotAUrl)?;
        if url.cannot_be_a_base() {
            return Err(LinkMismatch::NotAUrl);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(LinkMismatch::Credentials);
        }
        if url.origin() != self.host.origin() {
            return Err(LinkMismatch::Host {
                expected: self.host.origin().ascii_serialization(),
                found: url.origin().ascii_serialization(),
            });
        }
        let found: Vec<&str> = url.path().split('/').skip(1).collect();
        let prefix: Vec<&str> = self
            .host
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let route_mismatch = || LinkMismatch::Route {
            expected: self.path(),
            found: url.path().to_string(),
        };
        let Some(rest) = found.strip_prefix(&prefix[..]) else {
            return Err(route_mismatch());
        };
        let mut decoded = Vec::with_capacity(rest.len() + 1);
        for s in rest {
            let s = decode(s).ok_or_else(route_mismatch)?;
            // OData's key syntax (`users('alice@contoso.com')`, as `@odata.context` spells
            // it) is the same as two segments.
            match key_syntax(&s) {
                Some((name, key)) => decoded.extend([name, key]),
                None => decoded.push(s),
            }
        }
        // The version, then the route's segments, nothing more or less.
        let Some((version, decoded)) = decoded
            .split_first()
            .filter(|(_, r)| r.len() == self.segments.len())
        else {
            return Err(route_mismatch());
        };
        if !version.eq_ignore_ascii_case(self.version) {
            return Err(LinkMismatch::Version {
                expected: self.version.into(),
                found: version.clone(),
            });
        }
        // Names first: a link of another kind says so before its ids are compared.
        for (want, got) in self.segments.iter().zip(decoded) {
            if let Segment::Name(n) = want {
                if !n.eq_ignore_ascii_case(got) {
                    return Err(route_mismatch());
                }
            }
        }
        for (want, got) in self.segments.iter().zip(decoded.iter().cloned()) {
            let (what, expected, same) = match want {
                Segment::Name(_) => continue,
                Segment::Group(g) => {
                    if !g.eq_ignore_ascii_case(&got) {
                        return Err(LinkMismatch::Resource {
                            what: "group",
                            expected: g.clone(),
                            found: got,
                        });
                    }
                    continue;
                }
                Segment::User(u) => {
                    if !u.eq_ignore_ascii_case(&got) {
                        return Err(LinkMismatch::User {
                            expected: u.clone(),
                            found: got,
                        });
                    }
                    continue;
                }
                Segment::Calendar(c) => ("calendar", c, *c == got),
                Segment::List(l) => ("list", l, *l == got),
            };
            if !same {
                return Err(LinkMismatch::Resource {
                    what,
                    expected: expected.clone(),
                    found: got,
                });
            }
        }
        self.check_query(&url)
    }

    /// Only the state tokens, and a calendar view's own window.
    fn check_query(&self, url: &Url) -> Result<(), LinkMismatch> {
        for (name, value) in url.query_pairs() {
            let lower = name.to_ascii_lowercase();
            let (param, bound) = match (lower.as_str(), &self.window) {
                ("$skiptoken" | "$deltatoken", _) => continue,
                // A listing's own query, repeated by its nextLinks.
                (q, _)
                    if self
                        .listing
                        .is_some_and(|l| l.iter().any(|(k, _)| k.eq_ignore_ascii_case(q))) =>
                {
                    continue
                }
                ("startdatetime", Some((start, _))) => ("startDateTime", start),
                ("enddatetime", Some((_, end))) => ("endDateTime", end),
                _ => return Err(LinkMismatch::Query(name.into_owned())),
            };
            // The same instant, however it is written (`Z`, `+00:00`, fractions).
            let same = match (instant(bound), instant(&value)) {
                (Some(a), Some(b)) => a == b,
                _ => *bound == value,
            };
            if !same {
                return Err(LinkMismatch::Window {
                    param,
                    expected: bound.clone(),
                    found: value.into_owned(),
                });
            }
        }
        Ok(())
    }

    /// The route's path as the initial request spells it (for messages).
    fn path(&self) -> String {
        self.url().path().to_string()
    }
}

/// An RFC 3339 time, or one without an offset (UTC, as Graph reads `startDateTime`).
fn instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// `name('key')` as `(name, key)` (a quote in the key doubled, as OData escapes it).
fn key_syntax(segment: &str) -> Option<(String, String)> {
    let (name, rest) = segment.split_once("('")?;
    let key = rest.strip_suffix("')")?;
    (!name.is_empty()).then(|| (name.to_string(), key.replace("''", "'")))
}

/// A path segment with its `%XX` escapes decoded (`None` when they do not make UTF-8; a `+`
/// stays a `+`, as in any path).
fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The initial delta request of a partition on `graph_host` (see [`Route::new`]).
pub fn initial_url(graph_host: &str, id: &PartitionId) -> Result<String, GraphError> {
    Ok(Route::new(graph_host, id)?.initial_url())
}

/// Whether `link` points at the same origin as `graph_host`: a bearer token is only ever sent
/// there, whatever a response's links or `Location` say.
pub fn same_origin(graph_host: &str, link: &str) -> bool {
    // Asked at every poll: a link spelling the origin as Url serialises it, then a path,
    // is of it (the authority ends at the first `/`); any other spelling is parsed.
    with_host(graph_host, |host, origin| {
        link.strip_prefix(origin)
            .is_some_and(|rest| rest.starts_with('/'))
            || Url::parse(link).is_ok_and(|b| host.origin() == b.origin())
    })
    .unwrap_or(false)
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
