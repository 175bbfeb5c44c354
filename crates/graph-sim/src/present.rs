//! Per-request presentation of stored item JSON: `Prefer: outlook.timezone`, `$select` and
//! `Prefer: IdType="ImmutableId"`.
//!
//! Items are stored rendered in UTC with every property and with immutable ids; the fast
//! path hands those bytes out unchanged. Requests for regular ids pay one substring
//! replacement per Outlook event, and only requests asking for another time zone or a
//! projection pay a re-parse.

use std::borrow::Cow;

use chrono::NaiveDateTime;
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::model::{graph_time, IdAlias};
use super::SimError;

/// How items are shown to one request.
#[derive(Debug, Clone, Default)]
pub struct Presentation {
    /// Target zone and the name the client asked for (echoed in `timeZone`).
    pub tz: Option<(Tz, String)>,
    /// Properties to keep (besides `id` and OData annotations).
    pub select: Option<Vec<String>>,
    /// `Prefer: IdType="ImmutableId"`: Outlook events keep their immutable ids; without it
    /// they show their regular ids, as Graph's default is.
    pub immutable_ids: bool,
}

/// Windows zone names Outlook uses, mapped to IANA zones.
const WINDOWS_ZONES: &[(&str, &str)] = &[
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("Mountain Standard Time", "America/Denver"),
    ("Central Standard Time", "America/Chicago"),
    ("Eastern Standard Time", "America/New_York"),
    ("GMT Standard Time", "Europe/London"),
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Romance Standard Time", "Europe/Paris"),
    ("Central Europe Standard Time", "Europe/Budapest"),
    ("India Standard Time", "Asia/Kolkata"),
    ("China Standard Time", "Asia/Shanghai"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
];

/// Parses an `outlook.timezone` value (Windows or IANA name); `None` for UTC.
pub fn parse_zone(name: &str) -> Result<Option<(Tz, String)>, SimError> {
    let name = name.trim().trim_matches('"');
    if name.eq_ignore_ascii_case("utc") || name.is_empty() {
        return Ok(None);
    }
    let iana = WINDOWS_ZONES
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(name))
        .map(|(_, i)| *i)
        .unwrap_or(name);
    iana.parse::<Tz>()
        .map(|tz| Some((tz, name.to_string())))
        .map_err(|_| SimError::BadRequest(format!("unknown time zone '{name}'")))
}

impl Presentation {
    pub fn is_plain(&self) -> bool {
        self.tz.is_none() && self.select.is_none()
    }

    /// An id (an instance's or a removed item's) as this request sees it.
    pub fn id<'a>(&self, id: &'a str, alias: Option<&IdAlias>) -> Cow<'a, str> {
        match alias {
            Some(a) if !self.immutable_ids => a.to_regular(id),
            _ => Cow::Borrowed(id),
        }
    }

    /// The item as this request sees it.
    pub fn apply<'a>(&self, json: &'a str, alias: Option<&IdAlias>) -> Cow<'a, str> {
        let json = self.id(json, alias);
        if self.is_plain() {
            return json;
        }
        match self.fields(&json) {
            Some(s) => Cow::Owned(s),
            None => json,
        }
    }

    /// Time zone and projection applied; `None` when the JSON is not an object.
    fn fields(&self, json: &str) -> Option<String> {
        let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(json) else {
            return None;
        };
        if let Some((tz, name)) = &self.tz {
            for key in ["start", "end", "dueDateTime", "completedDateTime"] {
                if let Some(Value::Object(t)) = obj.get_mut(key) {
                    convert(t, tz, name);
                }
            }
        }
        if let Some(select) = &self.select {
            let keep = |k: &str| {
                k == "id" || k.starts_with('@') || select.iter().any(|s| s.eq_ignore_ascii_case(k))
            };
            obj = obj
                .into_iter()
                .filter(|(k, _)| keep(k))
                .collect::<Map<_, _>>();
        }
        Some(Value::Object(obj).to_string())
    }
}

fn convert(t: &mut Map<String, Value>, tz: &Tz, name: &str) {
    let utc = t
        .get("dateTime")
        .and_then(Value::as_str)
        .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok());
    if let Some(utc) = utc {
        let local = utc.and_utc().with_timezone(tz).naive_local();
        t.insert("dateTime".into(), Value::from(graph_time(local)));
        t.insert("timeZone".into(), Value::from(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_windows_zone_names_and_projects() {
        let p = Presentation {
            tz: parse_zone("\"Pacific Standard Time\"").unwrap(),
            ..Default::default()
        };
        let out = p.apply(
            r#"{"id":"1","start":{"dateTime":"2024-01-10T20:00:00.0000000","timeZone":"UTC"}}"#,
            None,
        );
        assert!(out.contains("2024-01-10T12:00:00.0000000"), "{out}");
        assert!(out.contains("Pacific Standard Time"));
        assert!(parse_zone("Not/AZone").is_err());
        assert!(parse_zone("UTC").unwrap().is_none());
        let s = Presentation {
            select: Some(vec!["title".into()]),
            ..Default::default()
        };
        let out = s.apply(
            r#"{"@odata.etag":"x","id":"1","title":"t","status":"s"}"#,
            None,
        );
        assert_eq!(out, r#"{"@odata.etag":"x","id":"1","title":"t"}"#);
    }

    #[test]
    fn regular_ids_replace_immutable_ones_unless_asked_for() {
        let alias = IdAlias {
            immutable: "AAkALgX=".into(),
            regular: "AAMkAGY=".into(),
        };
        let json = r#"{"id":"AAkALgX=_20260101T100000","seriesMasterId":"AAkALgX="}"#;
        let regular = Presentation::default();
        assert_eq!(
            regular.apply(json, Some(&alias)),
            r#"{"id":"AAMkAGY=_20260101T100000","seriesMasterId":"AAMkAGY="}"#
        );
        assert_eq!(regular.id("AAkALgX=", Some(&alias)), "AAMkAGY=");
        assert_eq!(regular.apply(json, None), json, "no alias, nothing to swap");
        let immutable = Presentation {
            immutable_ids: true,
            ..Default::default()
        };
        assert!(matches!(
            immutable.apply(json, Some(&alias)),
            Cow::Borrowed(_)
        ));
    }
}
