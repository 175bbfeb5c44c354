//! Why Kafka cannot be reached, in librdkafka's own words.
//!
//! librdkafka reports a wrong password, an untrusted certificate or a refused handshake as
//! asynchronous error events that name the broker ("sasl_ssl://host:9093/bootstrap: SASL
//! authentication error: …"), while the call that failed only says it timed out. Every client
//! of the sink carries a [`HealthContext`] that keeps the most telling recent error, so
//! start-up, `/readyz` and the logs can say what is wrong instead of "timed out".

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, NoCustomPartitioner, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// The last connection problem the sink's clients reported.
#[derive(Default, Debug)]
pub struct KafkaHealth {
    last: Mutex<Option<(Instant, RDKafkaErrorCode, String)>>,
}

/// How long a reported problem explains a failure.
const RECENT: Duration = Duration::from_secs(120);

/// Whether an error says something about the connection worth reporting.
fn telling(code: RDKafkaErrorCode) -> u8 {
    use RDKafkaErrorCode as C;
    match code {
        C::Authentication | C::SaslAuthenticationFailed | C::SSL => 3,
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => 3,
        C::BrokerTransportFailure | C::Resolve | C::UnsupportedSASLMechanism => 2,
        C::AllBrokersDown => 1,
        _ => 0,
    }
}

impl KafkaHealth {
    /// Records an error event; a vaguer one does not replace a telling one still recent.
    pub fn record(&self, code: RDKafkaErrorCode, reason: &str) {
        let rank = telling(code);
        if rank == 0 {
            return;
        }
        let mut last = self.last.lock();
        let keep = last
            .as_ref()
            .is_some_and(|(at, c, _)| telling(*c) > rank && at.elapsed() < RECENT);
        if !keep {
            *last = Some((Instant::now(), code, reason.to_string()));
        }
    }

    /// The most telling problem reported in the last two minutes.
    pub fn recent(&self) -> Option<String> {
        self.last
            .lock()
            .as_ref()
            .filter(|(at, _, _)| at.elapsed() < RECENT)
            .map(|(_, _, r)| r.clone())
    }
}

/// The context of the sink's admin and consumer clients: records connection errors.
#[derive(Clone, Default)]
pub struct HealthContext(pub Arc<KafkaHealth>);

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.0.record(code, reason);
        }
        tracing::debug!(error = %error, reason, "librdkafka error event");
    }
}

impl ConsumerContext for HealthContext {}

impl ProducerContext<NoCustomPartitioner> for HealthContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Connects with `config` and fetches the cluster's metadata (blocking). The error says why
/// it failed in librdkafka's words, naming the broker, when librdkafka said it.
pub fn probe(config: &ClientConfig, timeout: Duration) -> Result<(), String> {
    let ctx = HealthContext::default();
    // A plain producer: creating it needs no group, and polling it serves error events.
    let client: BaseProducer<HealthContext> = config
        .create_with_context(ctx.clone())
        .map_err(|e| format!("creating a Kafka client: {e}"))?;
    if let Err(e) = client.client().fetch_metadata(None, timeout) {
        // Error events arrive on the client's queue; serve them before asking.
        for _ in 0..5 {
            client.poll(Duration::from_millis(20));
        }
        return Err(ctx
            .0
            .recent()
            .unwrap_or_else(|| format!("no answer from {}: {e}", bootstrap_of(config))));
    }
    Ok(())
}

fn bootstrap_of(config: &ClientConfig) -> String {
    config
        .get("bootstrap.servers")
        .unwrap_or("the bootstrap servers")
        .to_string()
}
