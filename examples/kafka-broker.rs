//! Runs one real Kafka broker for a whole test run (used by `scripts/test.sh`):
//! `cargo run --example kafka-broker -- BOOTSTRAP_FILE`. Writes the bootstrap address to the
//! file once the broker answers, then runs until its standard input closes or it is killed.

use std::io::Read;

use graph_cdc::testkit::broker::KafkaBroker;

fn main() {
    let Some(file) = std::env::args().nth(1) else {
        eprintln!("usage: kafka-broker BOOTSTRAP_FILE");
        std::process::exit(2);
    };
    let started = std::time::Instant::now();
    let broker = match KafkaBroker::start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kafka-broker: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "kafka-broker: {} ready in {:.1}s",
        broker.bootstrap(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = std::fs::write(&file, broker.bootstrap()) {
        eprintln!("kafka-broker: writing {file}: {e}");
        std::process::exit(1);
    }
    // Until stdin closes (the script's end) or a signal kills us (the watchdog reaps the JVM).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(broker);
}
