//! A stand-in for Azure Event Hubs: relays what the simulator would have sent to a hub
//! (`graph_sim::subscriptions::EventHubOutbox`, filled for `EventHub:` notification URLs) to
//! a Kafka topic of the real test broker, one record per notification, keyed by
//! subscription id. A connector reading change notifications from Event Hubs through
//! Kafka's protocol (Event Hubs speaks it) can then be tested end to end.

use std::sync::Arc;
use std::time::Duration;

use graph_sim::SimState;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// Forwards the outbox to Kafka until dropped.
pub struct Relay {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<u64>>,
}

impl Relay {
    /// Starts relaying `sim`'s Event Hubs outbox to the broker at `bootstrap`; `topic` maps a
    /// hub name to its topic. Call on a Tokio runtime.
    pub fn start(
        sim: Arc<SimState>,
        bootstrap: &str,
        topic: impl Fn(&str) -> String + Send + 'static,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        let stop = CancellationToken::new();
        let halt = stop.clone();
        let task = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let m = tokio::select! {
                    _ = halt.cancelled() => break,
                    m = sim.eventhub.recv() => m,
                };
                let t = topic(&m.hub);
                // A record the broker refuses is retried until stopped: a hub keeps what it
                // was sent.
                loop {
                    let record = FutureRecord::to(&t)
                        .key(m.subscription_id.as_bytes())
                        .payload(&m.body);
                    match producer.send(record, Duration::from_secs(10)).await {
                        Ok(_) => break,
                        Err(_) if halt.is_cancelled() => return sent,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                sent += 1;
            }
            sent
        });
        Ok(Self {
            stop,
            task: Some(task),
        })
    }

    /// Stops relaying; returns how many records were produced.
    pub async fn stop(mut self) -> u64 {
        self.stop.cancel();
        match self.task.take() {
            Some(t) => t.await.unwrap_or(0),
            None => 0,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::shared_bootstrap;
    use crate::harness::{read_committed, run_id};
    use graph_sim::subscriptions::EventHubMessage;

    /// Outbox messages become records of the hub's topic, keyed by subscription, in order.
    #[tokio::test]
    async fn outbox_messages_become_kafka_records() {
        let bootstrap = shared_bootstrap().expect("a real Kafka broker");
        let sim = SimState::new(graph_sim::SimSettings::default());
        let run = run_id();
        let relay = Relay::start(sim.clone(), &bootstrap, {
            let run = run.clone();
            move |hub| format!("{hub}-{run}")
        })
        .expect("relay");
        for i in 0..3 {
            sim.eventhub.push(EventHubMessage {
                hub: "graph".into(),
                subscription_id: format!("sub-{}", i % 2),
                body: format!("{{\"value\":[{i}]}}").into_bytes(),
            });
        }
        let topic = format!("graph-{run}");
        let mut got = Vec::new();
        for _ in 0..100 {
            got = tokio::task::spawn_blocking({
                let (b, t) = (bootstrap.clone(), topic.clone());
                move || read_committed(&b, &t)
            })
            .await
            .expect("reader");
            if got.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(relay.stop().await, 3);
        let keys: Vec<String> = got
            .iter()
            .map(|c| String::from_utf8_lossy(&c.key).into_owned())
            .collect();
        assert_eq!(keys, ["sub-0", "sub-1", "sub-0"]);
        assert_eq!(got[2].value.as_deref(), Some(&b"{\"value\":[2]}"[..]));
        assert!(sim.eventhub.is_empty());
    }
}
