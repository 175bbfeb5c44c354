//! Why Kafka cannot be reached, in librdkafka's own words.
//!
//! librdkafka reports a wrong password, an untrusted certificate or a refused handshake as
//! asynchronous error events that name the broker ("sasl_ssl://host:9093/bootstrap: SASL
//! authentication error: …"), while the call that failed only says it timed out. Every client
//! of the sink carries a [`HealthContext`] that keeps the most telling recent error, so
//! start-up, the worker's health check (which `/readyz` reads) and the logs can say what is
//! wrong instead of "timed out".

use std::collections::BTreeMap;
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

/// Connects with `config` and fetches the cluster's metadata (blocking), with a client made
/// for this one call: for start-up and `validate --connect`. What runs all the time keeps a
/// [`KafkaProbe`] instead. The error says why it failed in librdkafka's words, naming the
/// broker, when librdkafka said it.
pub fn probe(config: &ClientConfig, timeout: Duration) -> Result<(), String> {
    KafkaProbe::new(config)?.check(timeout)
}

/// One Kafka client kept to probe the cluster again and again: each [`check`](Self::check)
/// is a metadata request over connections librdkafka keeps open, not a new client (with its
/// handshake and authentication) per probe.
pub struct KafkaProbe {
    client: BaseProducer<HealthContext>,
    ctx: HealthContext,
    bootstrap: String,
}

impl KafkaProbe {
    /// Builds the client (no network yet: librdkafka connects in the background).
    pub fn new(config: &ClientConfig) -> Result<Self, String> {
        let ctx = HealthContext::default();
        // A plain producer: creating it needs no group, and polling it serves error events.
        let client: BaseProducer<HealthContext> = config
            .create_with_context(ctx.clone())
            .map_err(|e| format!("creating a Kafka client: {e}"))?;
        let bootstrap = bootstrap_of(config);
        *BUILT.lock().entry(bootstrap.clone()).or_default() += 1;
        Ok(Self {
            client,
            ctx,
            bootstrap,
        })
    }

    /// Fetches the cluster's metadata (blocking, at most `timeout`, and a tenth of a second
    /// more when it fails).
    pub fn check(&self, timeout: Duration) -> Result<(), String> {
        let answer = self.client.client().fetch_metadata(None, timeout);
        // Error events arrive on the client's queue: serve them, so that a long-lived
        // client's queue does not grow, and after a failure wait for them a little before
        // asking for the reason; after a success, serve what is there without waiting.
        let wait = if answer.is_ok() {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        self.client.poll(wait);
        answer.map(drop).map_err(|e| {
            self.ctx
                .0
                .recent()
                .unwrap_or_else(|| format!("no answer from {}: {e}", self.bootstrap))
        })
    }
}

/// How many [`KafkaProbe`] clients were built for each `bootstrap.servers`. Tests read it
/// (per cluster, since tests of one process share it) to prove that what runs all the time
/// (`/readyz`, the health check) does not build a client per call.
static BUILT: Mutex<BTreeMap<String, u64>> = parking_lot::const_mutex(BTreeMap::new());

/// How many probe clients were built so far for `bootstrap_servers`.
pub fn probe_clients_built(bootstrap_servers: &str) -> u64 {
    BUILT.lock().get(bootstrap_servers).copied().unwrap_or(0)
}

fn bootstrap_of(config: &ClientConfig) -> String {
    config
        .get("bootstrap.servers")
        .unwrap_or("the bootstrap servers")
        .to_string()
}
