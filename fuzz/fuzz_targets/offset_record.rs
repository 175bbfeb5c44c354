//! The offsets-topic record decoder: any key and value decode or are refused, never a panic;
//! what decodes re-encodes to a key that decodes to the same record.
#![no_main]

use graph_cdc::offsets::codec::{decode, encode_key, encode_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: where the key ends; the rest is the value (or a tombstone when empty).
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = (split as usize).min(rest.len());
    let (key, value) = rest.split_at(split);
    let value = (!value.is_empty()).then_some(value);
    if let Ok(rec) = decode(key, value) {
        let key2 = encode_key(&rec.connector, &rec.partition);
        let value2 = rec.offset.as_ref().map(encode_value);
        let again = decode(key2.as_bytes(), value2.as_deref()).expect("re-encoded record decodes");
        assert_eq!(again, rec);
    }
});
