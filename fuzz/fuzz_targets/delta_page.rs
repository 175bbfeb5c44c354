//! The Graph delta page parser: any body is a page or a `MalformedPage`, never a panic; every
//! item's bytes are a slice of the body; and each item's `id` and `@removed` (read by the
//! structural fast scan when it can) are what serde reads from the item's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// What `parse_page` reads of an item, read by serde alone (the reference).
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

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    let Ok(page) = graph_cdc::graph::delta::parse_page(body.clone()) else {
        return;
    };
    assert!(page.next_link.is_some() != page.delta_link.is_some());
    for item in &page.items {
        let start = (item.raw.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
        assert!(
            start <= body.len() && item.raw.len() <= body.len() - start,
            "item outside the body"
        );
        let reference: Head = serde_json::from_slice(&item.raw)
            .unwrap_or_else(|e| panic!("parse_page accepted an item serde refuses: {e}"));
        assert_eq!(item.id, reference.id, "id");
        assert_eq!(
            item.removed,
            reference
                .removed
                .map(|r| r.reason.unwrap_or_else(|| "deleted".into())),
            "@removed"
        );
    }
});
