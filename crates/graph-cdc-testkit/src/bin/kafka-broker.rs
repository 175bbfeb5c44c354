//! Runs one real Kafka broker for a whole test run (used by `scripts/test.sh`):
//! `cargo run -p graph-cdc-testkit --bin kafka-broker -- BOOTSTRAP_FILE [INFO_FILE]`. Once the broker answers,
//! writes the [`BrokerInfo`](graph_cdc_testkit::broker::BrokerInfo) JSON (listeners,
//! certificates, SCRAM users) to INFO_FILE if given, then the plaintext bootstrap address to
//! BOOTSTRAP_FILE, and runs until its standard input closes or it is killed.

use std::io::Read;
use std::path::Path;

use graph_cdc_testkit::broker::KafkaBroker;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: kafka-broker BOOTSTRAP_FILE [INFO_FILE]");
        std::process::exit(2);
    };
    let info_file = args.next();
    let started = std::time::Instant::now();
    let broker = match KafkaBroker::start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kafka-broker: {e}");
            std::process::exit(1);
        }
    };
    let info = broker.info();
    eprintln!(
        "kafka-broker: ready in {:.1}s: plaintext {}, SASL_SSL {}, SSL (mTLS) {}",
        started.elapsed().as_secs_f64(),
        info.plaintext,
        info.sasl_ssl,
        info.ssl
    );
    // The info first: the script waits for the bootstrap file, then reads both.
    if let Some(path) = &info_file {
        if let Err(e) = info.save(Path::new(path)) {
            eprintln!("kafka-broker: writing {path}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = std::fs::write(&file, broker.bootstrap()) {
        eprintln!("kafka-broker: writing {file}: {e}");
        std::process::exit(1);
    }
    // Until stdin closes (the script's end) or a signal kills us (the watchdog reaps the JVM).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(broker);
}
