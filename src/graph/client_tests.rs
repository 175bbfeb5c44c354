//! The client against Graph stand-ins on loopback (a token endpoint and a Graph host of a
//! few canned answers) and against the simulator: `401`s and token generations, redirects,
//! answers over the cap, and `$batch` items counting against the mailbox limit.

use std::time::Duration;

use super::*;
use crate::graph::http::testing::{token_provider, Answer, Server};

const PAGE: &str = r#"{"value":[{"id":"a"}],"@odata.deltaLink":"http://graph/v1.0/users/u/todo/lists/delta?$deltatoken=2"}"#;

fn opts() -> ClientOptions {
    ClientOptions {
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_retries: 3,
        ..ClientOptions::default()
    }
}

/// A client of the app with tokens from `login` (a stand-in's or the simulator's URL).
fn client(login: &str, opts: ClientOptions) -> GraphClient {
    let http = crate::graph::http::client(&opts).expect("client");
    let tokens = Arc::new(token_provider(login, "s3cr3t", &opts));
    GraphClient::new(http, tokens, opts)
}

fn url(graph: &Server) -> String {
    format!("{}/v1.0/users/u/todo/lists/delta?$deltatoken=1", graph.url)
}

/// The bearer tokens the Graph stand-in was sent, in order.
fn bearers(graph: &Server) -> Vec<String> {
    graph
        .requests()
        .iter()
        .filter_map(|r| {
            r.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("authorization: bearer ")
                    .map(str::to_string)
            })
        })
        .collect()
}

#[tokio::test]
async fn a_401_to_an_outdated_token_retries_with_the_newer_one() {
    let login = Server::start(
        vec![Answer::token("t1"), Answer::token("t2")],
        Answer::token("t3"),
    )
    .await;
    // The first request's 401 arrives after another partition renewed the token.
    let late_401 = Answer {
        delay: Duration::from_millis(400),
        ..Answer::json(
            401,
            r#"{"error":{"code":"InvalidAuthenticationToken","message":"expired"}}"#,
        )
    };
    let graph = Server::start(vec![late_401], Answer::json(200, PAGE)).await;
    let c = client(&login.url, opts());
    let first = c.tokens().token().await.unwrap();
    let link = url(&graph);
    let page = {
        let get = c.get_page("u", PartitionKind::TaskLists, &link);
        let renew = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!c.tokens().invalidate(&first));
            assert_eq!(c.tokens().token().await.unwrap().generation(), 2);
        };
        tokio::join!(get, renew).0
    };
    assert_eq!(page.expect("a page").items.len(), 1);
    assert_eq!(
        bearers(&graph),
        ["t1", "t2"],
        "retried with the newer token"
    );
    assert_eq!(
        login.requests().len(),
        2,
        "the newer token was kept, not dropped"
    );
}

#[tokio::test]
async fn a_401_renews_once_then_a_refused_fresh_token_waits() {
    let login = Server::start(vec![Answer::token("t1")], Answer::token("t2")).await;
    let refused = Answer::json(
        401,
        r#"{"error":{"code":"InvalidAuthenticationToken","message":"no"}}"#,
    );
    let graph = Server::start(vec![refused.clone()], Answer::json(200, PAGE)).await;
    let c = client(&login.url, opts());
    assert!(c
        .get_page("u", PartitionKind::TaskLists, &url(&graph))
        .await
        .is_ok());
    assert_eq!(bearers(&graph), ["t1", "t2"]);
    // Refused with every token: the fresh one too.
    graph.set_fallback(refused);
    let e = c
        .get_page("u", PartitionKind::TaskLists, &url(&graph))
        .await
        .expect_err("refused");
    assert!(
        matches!(e, GraphError::Auth(AuthError::FreshTokenRefused)),
        "{e}"
    );
    assert!(!e.is_partition_fault() && e.is_service_failure());
}

#[tokio::test]
async fn a_redirect_from_graph_is_not_followed_and_fails_the_partition() {
    let login = Server::start(vec![], Answer::token("t1")).await;
    let target = Server::start(vec![], Answer::json(200, PAGE)).await;
    let to = format!(
        "{}/v1.0/users/u/todo/lists/delta?$deltatoken=SECRET",
        target.url
    );
    let graph = Server::start(vec![], Answer::json(307, "").header("location", &to)).await;
    let c = client(&login.url, opts());
    let e = c
        .get_page("u", PartitionKind::TaskLists, &url(&graph))
        .await
        .expect_err("not followed");
    assert!(
        matches!(e, GraphError::Redirected { status: 307, .. }),
        "{e:?}"
    );
    assert!(e.is_partition_fault(), "waiting does not cure a redirect");
    let text = e.to_string();
    assert!(
        text.contains(&target.url) && !text.contains("SECRET"),
        "{text}"
    );
    assert_eq!(graph.requests().len(), 1, "not retried");
    assert!(target.requests().is_empty(), "the bearer token stayed here");
}

#[tokio::test]
async fn an_answer_over_the_cap_is_retried_and_never_held() {
    let login = Server::start(vec![], Answer::token("t1")).await;
    let huge = format!(
        r#"{{"value":[],"@odata.deltaLink":"http://x/v1.0/u?$deltatoken=3"}}{}"#,
        " ".repeat(2 << 20)
    );
    let graph = Server::start(vec![Answer::json(200, &huge)], Answer::json(200, PAGE)).await;
    let o = ClientOptions {
        max_response_bytes: 1 << 20,
        ..opts()
    };
    let c = client(&login.url, o.clone());
    let page = c
        .get_page("u", PartitionKind::TaskLists, &url(&graph))
        .await;
    assert_eq!(page.expect("the next attempt's page").items.len(), 1);
    assert_eq!(graph.requests().len(), 2);
    // Always too large: the retries run out, naming why; the partition waits, it is not failed.
    graph.set_fallback(Answer::json(200, &huge));
    let e = c
        .get_page("u", PartitionKind::TaskLists, &url(&graph))
        .await
        .expect_err("too large");
    assert!(
        matches!(&e, GraphError::RetriesExhausted { last: Transient::TooLarge { limit }, .. } if *limit == 1 << 20),
        "{e:?}"
    );
    assert!(!e.is_partition_fault());
    assert!(e.to_string().contains("graph.max_response_bytes"), "{e}");
}

/// With `batch_polls`, a mailbox's polls in one `$batch` never exceed its 4 concurrent
/// requests: the simulator runs batch items as requests of their own and throttles a
/// mailbox's fifth (`max_in_flight` is what it saw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_polls_hold_a_mailbox_permit_per_item() {
    let sim = graph_sim::SimServer::start("127.0.0.1:0", graph_sim::SimSettings::default())
        .await
        .expect("simulator");
    sim.state
        .add_secret_client("contoso", "graph-cdc", "s3cr3t");
    let user = "busy@contoso.com";
    let lists: Vec<String> = {
        let mut store = sim.state.store.write();
        let info = store
            .create_user(graph_sim::model::UserSpec {
                tenant: Some("contoso".into()),
                user_principal_name: user.into(),
                id: None,
                display_name: None,
            })
            .expect("user");
        let mut lists = info.task_lists;
        for i in 0..11 {
            let spec = graph_sim::model::NameSpec {
                name: Some(format!("list {i}")),
            };
            lists.push(store.create_list(user, spec).expect("list"));
        }
        lists
    };
    let opts = ClientOptions {
        batch_polls: true,
        ..opts()
    };
    let c = client(&sim.url(), opts);
    // Each list's deltaLink, fetched one by one.
    let mut links = Vec::new();
    for l in &lists {
        let mut link = format!("{}/v1.0/users/{user}/todo/lists/{l}/tasks/delta", sim.url());
        loop {
            let p = c
                .get_page(user, PartitionKind::Tasks, &link)
                .await
                .expect("page");
            match (p.next_link, p.delta_link) {
                (Some(n), _) => link = n,
                (None, Some(d)) => break links.push(d),
                (None, None) => unreachable!("a page has one link"),
            }
        }
    }
    sim.state.stats.lock().max_in_flight.clear();
    // Twelve polls of one mailbox at once: three batches of four, or fewer at a time.
    let polls = links
        .iter()
        .map(|l| c.poll_delta(user, PartitionKind::Tasks, l));
    for r in futures_util::future::join_all(polls).await {
        r.expect("polled");
    }
    let st = sim.state.stats.lock().clone();
    assert!(st.count("batch", 200) >= 3, "{:?}", st.requests);
    assert!(st.peak_in_flight() <= 4, "{:?}", st.max_in_flight);
    assert_eq!(
        st.answered(429),
        0,
        "no item was throttled for the mailbox: {:?}",
        st.requests
    );
}
