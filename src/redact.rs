//! Keeping secrets out of logs, errors, metrics and the REST API: which librdkafka
//! properties hold one, a string type that never shows itself, and the masking helpers the
//! settings, the Kafka side and the Graph side share.
//!
//! A leaf module: it imports nothing of the crate, so every side may use it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// What a secret shows instead of itself.
pub const MASK: &str = "***";

/// Whether a librdkafka property (or any setting named like one) holds a secret.
pub fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    // `ssl.key.location` and friends name files, not secrets, but masking a path costs
    // nothing and a rule with exceptions is how secrets leak.
    ["password", "secret", "token", "key", "jaas", "client_state"]
        .iter()
        .any(|s| k.contains(s))
}

/// `value`, or [`MASK`] when `key` holds a secret.
pub fn masked<'a>(key: &str, value: &'a str) -> &'a str {
    if is_sensitive(key) {
        MASK
    } else {
        value
    }
}

/// A table of properties whose `Debug` masks the values of sensitive keys.
pub struct MaskedMap<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for MaskedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, masked(k, v))))
            .finish()
    }
}

/// Replaces, in `text`, every value of a sensitive key of `properties` (a library may echo
/// a value in its error message).
pub fn scrub<'a>(
    mut text: String,
    properties: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    for (k, v) in properties {
        if is_sensitive(k) && !v.is_empty() {
            text = text.replace(v.as_str(), MASK);
        }
    }
    text
}

/// Masks, in a JSON object of properties, the values of sensitive keys.
pub fn mask_object(properties: &mut serde_json::Map<String, Value>) {
    for (k, v) in properties.iter_mut() {
        if is_sensitive(k) {
            *v = Value::from(MASK);
        }
    }
}

/// A secret string: shown as [`MASK`] by `Debug`, `Display` and `Serialize`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_values_never_show() {
        assert!(is_sensitive("sasl.password") && is_sensitive("SSL.KEY.PASSWORD"));
        assert!(is_sensitive("sasl.oauthbearer.client.secret"));
        assert!(!is_sensitive("security.protocol"));
        let m: BTreeMap<String, String> = [
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("sasl.mechanism".to_string(), "PLAIN".to_string()),
        ]
        .into();
        let shown = format!("{:?}", MaskedMap(&m));
        assert!(
            !shown.contains("hunter2") && shown.contains("PLAIN"),
            "{shown}"
        );
        assert_eq!(scrub("bad value hunter2".into(), &m), "bad value ***");
        let mut o = serde_json::to_value(&m).unwrap();
        mask_object(o.as_object_mut().unwrap());
        assert_eq!(o["sasl.password"], MASK);
        let s = Secret::new("hunter2");
        let shown = format!("{s} {s:?} {}", serde_json::to_string(&s).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.expose(), "hunter2");
    }
}
