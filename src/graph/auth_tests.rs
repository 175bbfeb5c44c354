//! The token provider against a token endpoint on loopback: one fetch at a time, a timeout,
//! no redirect followed, a capped answer, generations.

use std::time::{Duration, Instant};

use super::*;
use crate::graph::http::testing::{token_provider, Answer, Server};

const SECRET: &str = "s3cr3t-client-value";

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn provider(server: &Server, opts: &ClientOptions) -> TokenProvider {
    token_provider(&server.url, SECRET, opts)
}

#[tokio::test]
async fn one_fetch_serves_every_caller_waiting_for_a_token() {
    let slow = Answer {
        delay: Duration::from_millis(300),
        ..Answer::token("t1")
    };
    let server = Server::start(vec![slow], Answer::token("t2")).await;
    let tokens = provider(&server, &opts());
    let all = futures_util::future::join_all((0..20).map(|_| tokens.token())).await;
    assert_eq!(server.requests().len(), 1, "one fetch for 20 callers");
    for t in &all {
        let t = t.as_ref().expect("a token");
        assert_eq!((t.secret(), t.generation()), ("t1", 1));
    }
    // Cached: no request.
    assert_eq!(tokens.token().await.unwrap().secret(), "t1");
    assert_eq!(server.requests().len(), 1);
    // A 401 with it drops it; the next caller fetches generation 2.
    let t1 = all[0].as_ref().unwrap().clone();
    assert!(!tokens.invalidate(&t1), "nothing newer yet");
    let t2 = tokens.token().await.unwrap();
    assert_eq!((t2.secret(), t2.generation()), ("t2", 2));
    // A 401 to a request sent with t1 now: a newer token exists, and it is kept.
    assert!(tokens.invalidate(&t1));
    assert_eq!(tokens.token().await.unwrap().generation(), 2);
    assert_eq!(server.requests().len(), 2);
    // The request posted the form, with the secret, to the token endpoint only.
    assert!(server.requests()[0].contains("client_secret=s3cr3t-client-value"));
    assert_eq!(format!("{t2:?}"), "AccessToken(***, generation 2)");
}

#[tokio::test]
async fn a_failed_fetch_is_shared_and_the_next_caller_tries_again() {
    let refused = Answer {
        delay: Duration::from_millis(200),
        ..Answer::json(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#,
        )
    };
    let server = Server::start(vec![refused], Answer::token("t1")).await;
    let tokens = provider(&server, &opts());
    let all = futures_util::future::join_all((0..10).map(|_| tokens.token())).await;
    assert_eq!(server.requests().len(), 1);
    for r in all {
        let e = r.expect_err("refused");
        assert!(e.to_string().contains("invalid_client"), "{e}");
        assert!(!e.to_string().contains(SECRET));
    }
    assert_eq!(tokens.token().await.unwrap().secret(), "t1");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_token_endpoint_that_does_not_answer_times_out() {
    let hung = Answer {
        delay: Duration::from_secs(30),
        ..Answer::token("late")
    };
    let server = Server::start(vec![hung], Answer::token("t1")).await;
    let o = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..opts()
    };
    let tokens = provider(&server, &o);
    let t0 = Instant::now();
    let e = tokens.token().await.expect_err("timed out");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("did not answer within 300ms"), "{e}");
    // The next caller is not stuck behind it.
    assert_eq!(tokens.token().await.unwrap().secret(), "t1");
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_secret_goes_nowhere_else() {
    let target = Server::start(vec![], Answer::token("stolen")).await;
    let elsewhere = format!("{}/evil/oauth2/v2.0/token?x=1", target.url);
    for status in [301, 302, 307, 308] {
        let server = Server::start(
            vec![Answer::json(status, "").header("location", &elsewhere)],
            Answer::token("t1"),
        )
        .await;
        let tokens = provider(&server, &opts());
        let e = tokens.token().await.expect_err("not followed");
        let text = e.to_string();
        assert!(
            text.contains(&format!("answered {status}")) && text.contains(&target.url),
            "{text}"
        );
        assert!(!text.contains("/evil") && !text.contains(SECRET), "{text}");
        assert!(
            matches!(&e, AuthError::Shared(inner) if matches!(**inner, AuthError::Redirected { .. }))
        );
    }
    assert!(target.requests().is_empty(), "{:?}", target.requests());
}

#[tokio::test]
async fn a_token_answer_over_the_cap_is_not_read() {
    let padded = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"big"}}{}"#,
        " ".repeat(64 * 1024)
    );
    let server = Server::start(vec![Answer::json(200, &padded)], Answer::token("t1")).await;
    let o = ClientOptions {
        max_response_bytes: 4096,
        ..opts()
    };
    let tokens = provider(&server, &o);
    let e = tokens.token().await.expect_err("too large");
    assert!(
        e.to_string()
            .contains("larger than graph.max_response_bytes (4096 bytes)"),
        "{e}"
    );
    assert_eq!(tokens.token().await.unwrap().secret(), "t1");
    // Under a cap it fits, the same answer is fine.
    server.then(Answer::json(200, &padded));
    let tokens = provider(&server, &opts());
    assert_eq!(tokens.token().await.unwrap().secret(), "big");
}
