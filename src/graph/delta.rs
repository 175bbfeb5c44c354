//! A delta page, parsed without re-serialising its items: each item's bytes are a slice of
//! the response body, passed through to Kafka as Graph sent them.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A page of a delta round.
#[derive(Debug)]
pub struct DeltaPage {
    pub items: Vec<DeltaItem>,
    /// More pages in this round.
    pub next_link: Option<String>,
    /// The round is complete; the next round starts here.
    pub delta_link: Option<String>,
}

/// One item of a page.
#[derive(Debug)]
pub struct DeltaItem {
    pub id: String,
    /// `Some(reason)` for an `@removed` item.
    pub removed: Option<String>,
    /// The item's JSON, exactly as sent.
    pub raw: Bytes,
}

/// A page that cannot be used (retried like a transport error).
#[derive(Debug, thiserror::Error)]
#[error("malformed delta page: {0}")]
pub struct MalformedPage(pub String);

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink")]
    next: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "@removed")]
    removed: Option<Removed>,
}

#[derive(Deserialize)]
struct Removed {
    #[serde(default)]
    reason: Option<String>,
}

/// Parses a page body; exactly one of nextLink / deltaLink must be present.
pub fn parse_page(body: Bytes) -> Result<DeltaPage, MalformedPage> {
    let text = std::str::from_utf8(&body).map_err(|e| MalformedPage(e.to_string()))?;
    let env: Envelope = serde_json::from_str(text).map_err(|e| MalformedPage(e.to_string()))?;
    if env.next.is_some() == env.delta.is_some() {
        return Err(MalformedPage(
            "expected exactly one of @odata.nextLink and @odata.deltaLink".into(),
        ));
    }
    let mut items = Vec::with_capacity(env.value.len());
    for raw in env.value {
        let head: Head = serde_json::from_str(raw.get())
            .map_err(|e| MalformedPage(format!("item without an id: {e}")))?;
        items.push(DeltaItem {
            id: head.id,
            removed: head
                .removed
                .map(|r| r.reason.unwrap_or_else(|| "deleted".into())),
            raw: body.slice_ref(raw.get().as_bytes()),
        });
    }
    Ok(DeltaPage {
        items,
        next_link: env.next,
        delta_link: env.delta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_slices_of_the_body_and_removals_carry_their_reason() {
        let body = Bytes::from_static(
            br##"{"@odata.context":"x","value":[{"id":"a","subject":"Hi \"there\"","n":[1,2]},{"@odata.type":"#e","id":"b","@removed":{"reason":"changed"}},{"id":"c","@removed":{}}],"@odata.deltaLink":"http://h/d?$deltatoken=t"}"##,
        );
        let p = parse_page(body.clone()).unwrap();
        assert_eq!(p.items.len(), 3);
        assert_eq!(
            &p.items[0].raw[..],
            br#"{"id":"a","subject":"Hi \"there\"","n":[1,2]}"#
        );
        assert_eq!(p.items[0].removed, None);
        assert_eq!(p.items[1].removed.as_deref(), Some("changed"));
        assert_eq!(p.items[2].removed.as_deref(), Some("deleted"));
        assert_eq!(p.delta_link.as_deref(), Some("http://h/d?$deltatoken=t"));
        // Zero-copy: the slice points into the body.
        let start = p.items[0].raw.as_ptr() as usize - body.as_ptr() as usize;
        assert!(start < body.len());
    }

    #[test]
    fn malformed_pages_are_refused() {
        for bad in [
            &b"<html>"[..],
            br#"{"value":[]}"#,
            br#"{"value":[],"@odata.nextLink":"a","@odata.deltaLink":"b"}"#,
            br#"{"value":[{"subject":"no id"}],"@odata.nextLink":"a"}"#,
            br#"{"value":[{"id":"x"}],"@odata.nextLink":"a""#,
        ] {
            assert!(parse_page(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
