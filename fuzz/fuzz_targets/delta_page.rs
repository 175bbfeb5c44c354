//! The Graph delta page parser: any body is a page or a `MalformedPage`, never a panic, and
//! every item's bytes are a slice of the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    if let Ok(page) = graph_cdc::graph::delta::parse_page(body.clone()) {
        assert!(page.next_link.is_some() != page.delta_link.is_some());
        for item in &page.items {
            let start = item.raw.as_ptr() as usize - body.as_ptr() as usize;
            assert!(start + item.raw.len() <= body.len(), "item outside the body");
        }
    }
});
