//! The librdkafka configuration of each client the sink creates, and the check `validate`
//! and start-up run on it.
//!
//! Order (a later layer wins): `bootstrap.servers`, the connector's defaults (producer),
//! `[kafka.options]`, the client's own table, then the properties the connector owns
//! (producer; the consumers add theirs where they are created). Validation has refused
//! user options that would collide with an owned one.

use std::collections::BTreeMap;

use rdkafka::admin::AdminClient;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;

use super::health::HealthContext;
use super::properties::{reader_config, ClientRole, PRODUCER_DEFAULTS};
use super::SinkOptions;
use crate::redact::{is_sensitive, scrub, MaskedMap};

/// librdkafka's `message.max.bytes` default.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The user's librdkafka properties, by table (`[kafka.options]` and the client tables).
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// `[kafka.options]`: every client.
    pub all: BTreeMap<String, String>,
    /// `[kafka.producer_options]`.
    pub producer: BTreeMap<String, String>,
    /// `[kafka.consumer_options]`.
    pub consumer: BTreeMap<String, String>,
    /// `[kafka.admin_options]`.
    pub admin: BTreeMap<String, String>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("all", &MaskedMap(&self.all))
            .field("producer", &MaskedMap(&self.producer))
            .field("consumer", &MaskedMap(&self.consumer))
            .field("admin", &MaskedMap(&self.admin))
            .finish()
    }
}

impl ClientOptions {
    /// The user's tables for one client, in the order they apply, with their names.
    fn layers(&self, role: ClientRole) -> [(&'static str, &BTreeMap<String, String>); 2] {
        let own = match role {
            ClientRole::Producer => &self.producer,
            ClientRole::Consumer => &self.consumer,
            ClientRole::Admin => &self.admin,
        };
        [("kafka.options", &self.all), (role.table(), own)]
    }

    /// The value one client ends up with for `key`, if the user set it.
    pub fn effective(&self, role: ClientRole, key: &str) -> Option<&str> {
        self.layers(role)
            .iter()
            .rev()
            .find_map(|(_, t)| t.get(key))
            .map(String::as_str)
    }
}

impl SinkOptions {
    fn config(&self, role: ClientRole) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        if role == ClientRole::Producer {
            for (k, v) in PRODUCER_DEFAULTS {
                c.set(*k, *v);
            }
        }
        for (_, table) in self.kafka.layers(role) {
            for (k, v) in table {
                c.set(k, v);
            }
        }
        c
    }

    /// The transactional producer's configuration, owned properties included.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.config(ClientRole::Producer);
        c.set("transactional.id", &self.transactional_id)
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                self.transaction_timeout.as_millis().to_string(),
            );
        c
    }

    /// A plain (not transactional) idempotent producer's configuration: the control topic's
    /// records (`control.rs`), written outside any shard.
    pub fn plain_producer_config(&self) -> ClientConfig {
        let mut c = self.config(ClientRole::Producer);
        c.set("enable.idempotence", "true");
        c
    }

    /// The consumers' configuration (the reader adds its group and isolation level).
    pub fn consumer_config(&self) -> ClientConfig {
        self.config(ClientRole::Consumer)
    }

    /// The admin client's configuration (topic creation, probes).
    pub fn admin_config(&self) -> ClientConfig {
        self.config(ClientRole::Admin)
    }

    /// The largest record the producer accepts (`message.max.bytes`, uncompressed).
    pub fn max_message_bytes(&self) -> usize {
        self.kafka
            .effective(ClientRole::Producer, "message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }
}

/// Builds every client the worker would create from these options, without connecting
/// anywhere, and reports each property librdkafka refuses, naming its table and key.
pub fn check(opts: &SinkOptions) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    // One property at a time first: librdkafka stops at the first bad one.
    for role in ClientRole::ALL {
        for (table, map) in opts.kafka.layers(role) {
            if table == "kafka.options" && role != ClientRole::Producer {
                continue; // checked once, with the producer
            }
            for (k, v) in map {
                if let Err(e) = ClientConfig::new().set(k, v).create_native_config() {
                    errs.push(explain(opts, role, &e, Some((table, k))));
                }
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    // Then whole clients: properties that only fail together (a protocol without its
    // mechanism, a CA file that does not exist or does not parse, OIDC without its URL).
    let ctx = HealthContext::default();
    let producer: Result<BaseProducer<HealthContext>, _> =
        opts.producer_config().create_with_context(ctx.clone());
    if let Err(e) = producer {
        errs.push(explain(opts, ClientRole::Producer, &e, None));
    }
    let consumer: Result<BaseConsumer<HealthContext>, _> = reader_config(
        &opts.consumer_config(),
        &format!("{}-validate", opts.connector),
    )
    .create_with_context(ctx.clone());
    if let Err(e) = consumer {
        errs.push(explain(opts, ClientRole::Consumer, &e, None));
    }
    let admin: Result<AdminClient<HealthContext>, _> = opts.admin_config().create_with_context(ctx);
    if let Err(e) = admin {
        errs.push(explain(opts, ClientRole::Admin, &e, None));
    }
    errs.dedup();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// librdkafka's refusal, prefixed with the table and key it concerns, secrets masked.
fn explain(
    opts: &SinkOptions,
    role: ClientRole,
    e: &KafkaError,
    at: Option<(&str, &String)>,
) -> String {
    let what = match e {
        KafkaError::ClientConfig(_, desc, _, _) => desc.clone(),
        KafkaError::ClientCreation(msg) => msg.clone(),
        other => other.to_string(),
    };
    let what = what.trim().to_string();
    let layers = opts.kafka.layers(role);
    // Whatever is said below, no secret value is in it (librdkafka may echo a value).
    let mask = |text: String| scrub(text, layers.iter().flat_map(|(_, table)| table.iter()));
    let named = at.map(|(t, k)| (t.to_string(), k.clone())).or_else(|| {
        // The last table setting a property the message mentions is the one to fix.
        layers.iter().rev().find_map(|(t, map)| {
            let lower = what.to_ascii_lowercase();
            // "SASL mechanism GSSAPI" is about `sasl.mechanism`.
            map.keys()
                .filter(|k| lower.contains(k.as_str()) || lower.contains(&k.replace('.', " ")))
                .max_by_key(|k| k.len())
                .map(|k| (t.to_string(), k.clone()))
        })
    });
    mask(match named {
        Some((table, key)) => {
            let value = layers
                .iter()
                .find(|(t, _)| *t == table)
                .and_then(|(_, m)| m.get(&key))
                .filter(|_| !is_sensitive(&key) || key.ends_with(".location"));
            match value {
                // Paths and plain values help; secrets are never shown.
                Some(v) if !what.contains(v.as_str()) => {
                    format!("{table}.\"{key}\" = \"{v}\": {what}")
                }
                _ => format!("{table}.\"{key}\": {what}"),
            }
        }
        None => format!(
            "kafka.options: the {} refuses this configuration: {what}",
            role.name()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SinkOptions {
        SinkOptions::new("b:9092", "cdc", "cdc-w0")
    }

    #[test]
    fn user_options_win_over_defaults_and_owned_properties_win_over_everything() {
        let mut o = opts();
        let p = o.producer_config();
        assert_eq!(p.get("compression.type"), Some("zstd"));
        assert_eq!(p.get("linger.ms"), Some("5"));
        assert_eq!(p.get("transactional.id"), Some("cdc-w0"));
        assert_eq!(p.get("transaction.timeout.ms"), Some("60000"));
        o.kafka.all.insert("compression.type".into(), "lz4".into());
        o.kafka.all.insert("linger.ms".into(), "20".into());
        o.kafka.producer.insert("linger.ms".into(), "50".into());
        o.kafka
            .consumer
            .insert("fetch.max.bytes".into(), "1000".into());
        o.kafka
            .admin
            .insert("request.timeout.ms".into(), "9000".into());
        let p = o.producer_config();
        assert_eq!(
            p.get("compression.type"),
            Some("lz4"),
            "options beat defaults"
        );
        assert_eq!(
            p.get("linger.ms"),
            Some("50"),
            "the producer's table beats options"
        );
        assert_eq!(
            p.get("fetch.max.bytes"),
            None,
            "consumer options stay with consumers"
        );
        assert_eq!(o.consumer_config().get("fetch.max.bytes"), Some("1000"));
        assert_eq!(o.consumer_config().get("compression.type"), Some("lz4"));
        assert_eq!(o.consumer_config().get("linger.ms"), Some("20"));
        assert_eq!(o.admin_config().get("request.timeout.ms"), Some("9000"));
        assert_eq!(o.admin_config().get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn the_connector_sets_every_property_it_owns() {
        use crate::sink::properties::OWNED;
        let o = opts();
        let reader = reader_config(&o.consumer_config(), "g");
        for (key, roles, _) in OWNED {
            for role in *roles {
                let c = match role {
                    ClientRole::Producer => o.producer_config(),
                    ClientRole::Consumer => reader.clone(),
                    ClientRole::Admin => o.admin_config(),
                };
                assert!(c.get(key).is_some(), "{key} is not set on the {role:?}");
            }
        }
    }

    #[test]
    fn the_size_limit_is_the_producers() {
        let mut o = opts();
        assert_eq!(o.max_message_bytes(), 1_000_000);
        o.kafka
            .all
            .insert("message.max.bytes".into(), "2000000".into());
        assert_eq!(o.max_message_bytes(), 2_000_000);
        o.kafka
            .producer
            .insert("message.max.bytes".into(), "300000".into());
        assert_eq!(o.max_message_bytes(), 300_000);
        o.kafka
            .consumer
            .insert("message.max.bytes".into(), "5".into());
        assert_eq!(o.max_message_bytes(), 300_000);
    }

    #[test]
    fn check_names_table_and_key_and_masks_secrets() {
        let mut o = opts();
        assert_eq!(check(&o), Ok(()));
        o.kafka.consumer.insert("no.such.thing".into(), "1".into());
        o.kafka
            .all
            .insert("sasl.password".into(), "pw-123456".into());
        o.kafka
            .all
            .insert("security.protocol".into(), "pw-123456".into());
        let errs = check(&o).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("kafka.consumer_options.\"no.such.thing\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("kafka.options.\"security.protocol\"")),
            "{errs:?}"
        );
        assert!(errs.iter().all(|e| !e.contains("pw-123456")), "{errs:?}");
    }
}
