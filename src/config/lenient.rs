//! Reading the merged layers into [`super::Settings`] when the environment gives every value
//! as a string.
//!
//! The `config` crate's environment source does not guess types ([`super::env`] turns its
//! `try_parsing` off): guessing read `GRAPH_CDC__SERVER__AUTH_TOKEN=987654321` as an integer
//! (refused, with the secret in the message) and a client secret `12e34` as a float. So every
//! value from the environment arrives as the string it is, a string setting keeps it
//! verbatim, and [`Lenient`] parses a string where the setting is a number or a boolean
//! (`GRAPH_CDC__GRAPH__PAGE_SIZE=500`, `GRAPH_CDC__KAFKA__CREATE_TOPICS=false`). Values from
//! TOML keep their TOML types: `page_size = "500"` is accepted too, `client_secret = 1` is
//! not (quote it).

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;

/// The merged settings as JSON, deserialised with numbers and booleans read from strings.
pub(super) struct Lenient(pub Value);

type Error = serde_json::Error;

impl<'de> IntoDeserializer<'de, Error> for Lenient {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl Lenient {
    /// A number written as a string (`"500"`, `"-1"`, `"0.25"`), handed to the visitor as the
    /// number it is; anything else as the JSON value it is (the visitor names what it wanted).
    fn number<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if let Value::String(s) = &self.0 {
            let t = s.trim();
            if let Ok(n) = t.parse::<u64>() {
                return v.visit_u64(n);
            }
            if let Ok(n) = t.parse::<i64>() {
                return v.visit_i64(n);
            }
            // Only what looks like a decimal number: not `inf`, `NaN` or `infinity`.
            if t.bytes().any(|b| b.is_ascii_digit())
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            {
                if let Ok(f) = t.parse::<f64>() {
                    return v.visit_f64(f);
                }
            }
        }
        self.0.deserialize_any(v)
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.number(v)
        })*
    };
}

impl<'de> Deserializer<'de> for Lenient {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => {
                let mut map = MapDeserializer::new(m.into_iter().map(|(k, x)| (k, Lenient(x))));
                let out = v.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
            Value::Array(a) => {
                let mut seq = SeqDeserializer::new(a.into_iter().map(Lenient));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if let Value::String(s) = &self.0 {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" => return v.visit_bool(true),
                "false" => return v.visit_bool(false),
                _ => {}
            }
        }
        self.0.deserialize_any(v)
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, v)
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        n: usize,
        i: i32,
        f: f64,
        b: bool,
        s: String,
        o: Option<u32>,
        v: Vec<String>,
    }

    fn read(v: Value) -> Result<T, String> {
        T::deserialize(Lenient(v)).map_err(|e| e.to_string())
    }

    #[test]
    fn strings_become_numbers_and_booleans_only_where_the_field_wants_one() {
        let t = read(serde_json::json!({
            "n": "500", "i": "-3", "f": "0.25", "b": "false", "s": "987654321", "o": "7",
            "v": ["12e34"]
        }))
        .unwrap();
        assert_eq!(
            t,
            T {
                n: 500,
                i: -3,
                f: 0.25,
                b: false,
                s: "987654321".into(),
                o: Some(7),
                v: vec!["12e34".into()]
            }
        );
        // TOML's own types still work.
        let t = read(serde_json::json!({
            "n": 5, "i": 1, "f": 1, "b": true, "s": "x", "o": null, "v": []
        }))
        .unwrap();
        assert_eq!((t.n, t.f, t.b, t.o), (5, 1.0, true, None));
        // What does not parse is refused as the string it is.
        for (k, bad) in [
            ("n", "many"),
            ("n", "-1"),
            ("b", "yes"),
            ("f", "inf"),
            ("n", "1.5"),
        ] {
            let mut v = serde_json::json!({"n": 1, "i": 1, "f": 1, "b": true, "s": "x", "v": []});
            v[k] = Value::from(bad);
            let e = read(v).expect_err(bad);
            assert!(e.contains("invalid"), "{k}={bad}: {e}");
        }
        let e =
            read(serde_json::json!({"n": 1, "i": 1, "f": 1, "b": true, "s": 5, "v": [], "x": 1}))
                .unwrap_err();
        assert!(e.contains("expected a string"), "{e}");
    }
}
