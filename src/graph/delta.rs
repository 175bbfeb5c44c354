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

pub use super::error::MalformedPage;

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
    parse(body, false)
}

/// Parses a page of a directory listing (a group's transitive members), which has no delta:
/// a page without nextLink is the listing's last, and a deltaLink or an `@removed` item
/// cannot be part of it. Only `group_members` partitions read listings; every other kind
/// keeps [`parse_page`]'s rule, where a page without either link is malformed.
pub fn parse_listing(body: Bytes) -> Result<DeltaPage, MalformedPage> {
    parse(body, true)
}

fn parse(body: Bytes, listing: bool) -> Result<DeltaPage, MalformedPage> {
    let text = std::str::from_utf8(&body).map_err(MalformedPage::Utf8)?;
    let env: Envelope = serde_json::from_str(text).map_err(MalformedPage::Json)?;
    let links_ok = if listing {
        env.delta.is_none()
    } else {
        env.next.is_some() != env.delta.is_some()
    };
    if !links_ok {
        return Err(if listing {
            MalformedPage::Listing
        } else {
            MalformedPage::Links
        });
    }
    let mut items = Vec::with_capacity(env.value.len());
    for raw in env.value {
        let head = match scan::head(raw.get()) {
            Some(head) => head,
            // Keys with escapes, duplicate members, not an object: let serde decide.
            None => serde_json::from_str(raw.get()).map_err(MalformedPage::Item)?,
        };
        if listing && head.removed.is_some() {
            return Err(MalformedPage::Listing);
        }
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

/// A second serde pass over each item only to read `id` and `@removed` doubled the parse
/// cost; the envelope parse has already validated each item as JSON, so its top-level
/// members can be walked structurally, decoding only those two values.
mod scan {
    use super::{Head, Removed};

    fn ws(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    }

    /// `b[i]` is an opening quote: the index after the closing one.
    fn string_end(b: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        loop {
            j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
            if b[j] == b'"' {
                return Some(j + 1);
            }
            j += 2; // an escape: skip the escaped byte
        }
    }

    /// The index after the value starting at `b[i]`.
    fn value_end(b: &[u8], i: usize) -> Option<usize> {
        match b.get(i)? {
            b'"' => string_end(b, i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                loop {
                    match b.get(j)? {
                        b'"' => {
                            j = string_end(b, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => {
                let mut j = i;
                while !matches!(b.get(j)?, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    j += 1;
                }
                Some(j)
            }
        }
    }

    /// `id` and `@removed` of a JSON object, or None when the fast path cannot tell.
    pub(super) fn head(raw: &str) -> Option<Head> {
        let b = raw.as_bytes();
        let mut i = ws(b, 0);
        if *b.get(i)? != b'{' {
            return None;
        }
        i = ws(b, i + 1);
        let (mut id, mut removed) = (None, None);
        if *b.get(i)? != b'}' {
            loop {
                if *b.get(i)? != b'"' {
                    return None;
                }
                let key_end = string_end(b, i)?;
                let key = raw.get(i + 1..key_end - 1)?;
                if key.contains('\\') {
                    return None;
                }
                i = ws(b, key_end);
                if *b.get(i)? != b':' {
                    return None;
                }
                i = ws(b, i + 1);
                let end = value_end(b, i)?;
                let value = raw.get(i..end)?;
                match key {
                    "id" if id.is_none() => id = Some(serde_json::from_str::<String>(value).ok()?),
                    "@removed" if removed.is_none() => {
                        removed = Some(serde_json::from_str::<Option<Removed>>(value).ok()?)
                    }
                    "id" | "@removed" => return None,
                    _ => {}
                }
                i = ws(b, end);
                match *b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        Some(Head {
            id: id?,
            removed: removed.flatten(),
        })
    }
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
    fn the_fast_scan_agrees_with_serde() {
        for item in [
            r#"{"id":"a"}"#,
            r#" { "x" : [1, {"id":"no"}, "]}\"" ] , "id" : "b\u00e9" , "n": -1.5e3, "t": true } "#,
            r#"{"@removed":{"reason":"changed"},"id":"c"}"#,
            r#"{"@removed":null,"id":"d"}"#,
            r#"{"@removed":{},"id":"e","z":null}"#,
            r#"{"i\u0064":"escaped key"}"#,
            r#"{"id":"dup","id":"dup2"}"#,
            r#"{"id":1}"#,
            r#"{"subject":"no id"}"#,
            r#"{}"#,
            r#"[1]"#,
        ] {
            let serde: Option<Head> = serde_json::from_str(item).ok();
            let fast = scan::head(item);
            if let Some(f) = &fast {
                let s = serde.as_ref().expect(item);
                assert_eq!(f.id, s.id, "{item}");
                assert_eq!(
                    f.removed.as_ref().map(|r| r.reason.clone()),
                    s.removed.as_ref().map(|r| r.reason.clone()),
                    "{item}"
                );
            }
        }
        assert_eq!(scan::head(r#"{"a":{"b":"}"},"id":"x"}"#).unwrap().id, "x");
        assert!(
            scan::head(r#"{"i\u0064":"y"}"#).is_none(),
            "escaped keys go to serde"
        );
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

    #[test]
    fn a_listing_page_without_links_is_its_last_and_delta_pages_stay_strict() {
        let last = Bytes::from_static(
            br#"{"@odata.context":"x","value":[{"id":"u1","userPrincipalName":"a@c.com","mail":null}]}"#,
        );
        let p = parse_listing(last.clone()).unwrap();
        assert_eq!((p.next_link, p.delta_link), (None, None));
        assert_eq!(p.items[0].id, "u1");
        assert_eq!(
            &p.items[0].raw[..],
            br#"{"id":"u1","userPrincipalName":"a@c.com","mail":null}"#
        );
        assert!(parse_page(last).is_err(), "a delta page needs a link");
        let next = Bytes::from_static(br#"{"value":[],"@odata.nextLink":"n"}"#);
        assert_eq!(parse_listing(next).unwrap().next_link.as_deref(), Some("n"));
        for bad in [
            &br#"{"value":[],"@odata.deltaLink":"d"}"#[..],
            br#"{"value":[{"id":"u","@removed":{}}]}"#,
            br#"{"value":[{"userPrincipalName":"no id"}]}"#,
            br#"{"@odata.nextLink":"n"}"#,
        ] {
            assert!(parse_listing(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
