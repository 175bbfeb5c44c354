//! Crash-resume: the worker runs as its own process (`graph-cdc run`) and is SIGKILLed at
//! random moments of an initial sync and of incremental rounds, then restarted. A
//! `read_committed` consumer's compacted view must equal the truth, with no record committed
//! twice.

use std::time::Duration;

use chrono::NaiveDateTime;
use graph_cdc::source::PartitionId;
use graph_sim::generate::MutateSpec;
use rand::Rng;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    crash_resume(None, 10).await;
}

/// Runs `graph-cdc run` (over `secured`: a bootstrap address and librdkafka options, else
/// the plaintext listener) and SIGKILLs it `kills` times at random points, then lets it
/// converge; checks the compacted view against the truth and that nothing was committed twice.
pub async fn crash_resume(secured: Option<(String, Vec<(String, String)>)>, kills: u64) {
    let (sim, users) = sim_with_users(3, 60, 20, 21).await;
    let start = NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S").unwrap();
    // Read back over the plaintext listener of the same broker.
    let plain = match &secured {
        Some(_) => {
            graph_cdc_testkit::broker::shared_broker()
                .expect("the test broker")
                .plaintext
        }
        None => bootstrap(),
    };
    let mut spec = spec(&sim, &plain, Vec::<PartitionId>::new());
    spec.sink.transactional_id = format!("{}-w", spec.sink.connector);
    let dir =
        std::env::temp_dir().join(format!("graph-cdc-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("worker.toml");
    let toml = match &secured {
        Some((bootstrap, options)) => config_secured(&spec, &users, bootstrap, options),
        None => config(&spec, &users),
    };
    std::fs::write(&cfg, toml).unwrap();

    let mut rng = rand::rng();
    let mut killed = 0;
    for i in 0..kills {
        let child = launch(&cfg);
        // Early kills land in the initial sync, later ones in incremental rounds.
        let ms = rng.random_range(300..2500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        signal(&child, libc::SIGKILL);
        let mut child = child;
        let _ = child.wait();
        killed += 1;
        if i >= kills / 3 {
            let m = MutateSpec {
                count: 25,
                start,
                days: 31,
                seed: Some(500 + i),
                ..Default::default()
            };
            graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
        }
    }
    // A last run to convergence with debug logs (scanned for secrets), then a graceful stop.
    let log = dir.join("worker.log");
    let mut child = launch_logged(&cfg, "debug", &log);
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(120)));
    let status = stop_gracefully(&mut child, Duration::from_secs(10), "the worker").await;
    assert!(status.success(), "graceful stop exits 0: {status}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 50, "debug logs were written");
    assert!(logged.contains("transaction committed"));
    assert!(
        !logged.contains(SECRET),
        "the client secret appears in the logs"
    );
    for (k, v) in secured.iter().flat_map(|(_, o)| o) {
        if k.contains("password") {
            assert!(!logged.contains(v.as_str()), "{k} appears in the logs");
        }
    }
    let records: Vec<Committed> = all_records(&spec);
    assert_eq!(killed, kills);
    assert!(records.len() > 300, "{} records", records.len());
    assert_eq!(duplicates(&records), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}
