//! The Graph client's transport rules end to end: answers over `graph.max_response_bytes`
//! are dropped and fetched again, a token endpoint redirecting elsewhere gets nothing sent
//! there and is retried, a `401` renews the token; nothing is lost or committed twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use graph_sim::faults::{FaultKind, FaultSpec};

use crate::common::*;

/// A listener that counts connections and answers none: where a redirect points.
async fn trap() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (url, hits)
}

/// A rule of `kind` whose `Retry-After` (when it sends one) is short.
fn fault(kind: FaultKind) -> FaultSpec {
    FaultSpec {
        retry_after: Some(0.05),
        ..FaultSpec::new(kind)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_redirects_and_401s_lose_nothing() {
    let (sim, users) = sim_with_users(2, 30, 6, 41).await;
    let (elsewhere, hits) = trap().await;
    // The first token requests are redirected to the trap (a 307 keeps the form: a client
    // following it would post the secret there).
    sim.state.add_fault(FaultSpec {
        endpoint: Some(graph_sim::faults::TOKEN_ENDPOINT.into()),
        count: Some(2),
        location: Some(format!("{elsewhere}/contoso/oauth2/v2.0/token")),
        ..fault(FaultKind::Redirect)
    });
    // The next 8 answers are 3 MiB (a page, then whitespace), for a cap of 1 MiB; one token
    // answer too.
    let huge = |count| FaultSpec {
        count: Some(count),
        body_bytes: Some(3 << 20),
        ..fault(FaultKind::Oversized)
    };
    sim.state.add_fault(huge(8));
    sim.state.add_fault(FaultSpec {
        endpoint: Some(graph_sim::faults::TOKEN_ENDPOINT.into()),
        ..huge(1)
    });
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        ..fault(FaultKind::Unauthorized)
    });
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&users));
    spec.client.max_response_bytes = 1 << 20;
    let w = start_worker(&spec);
    converge_except(&sim, &spec, &w, &|_| false);
    // Changes after the initial sync, the next 4 polls answered oversized.
    sim.state.add_fault(huge(4));
    graph_sim::generate::mutate(
        &mut sim.state.store.write(),
        &graph_sim::generate::MutateSpec {
            count: 30,
            start: chrono::NaiveDateTime::parse_from_str(
                "2026-05-01T00:00:00",
                "%Y-%m-%dT%H:%M:%S",
            )
            .unwrap(),
            days: 31,
            seed: Some(42),
            ..Default::default()
        },
    );
    converge_except(&sim, &spec, &w, &|_| false);
    w.stop().await.expect("clean stop");
    // Every fault fired (count-limited rules leave the list when spent).
    let left = sim.state.faults.lock().list();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing went where the redirect pointed"
    );
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}
