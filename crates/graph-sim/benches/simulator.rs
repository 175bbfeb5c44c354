//! How fast the Graph simulator serves delta pages, so benchmarks of the connector measure
//! the connector. Run: `cargo bench --bench simulator`.
//!
//! Everything runs on one thread (a current-thread runtime, client and server together), so
//! wall time is CPU time. Each figure is printed against a baseline measured in the same run:
//! - in-process: building a page of 100 events (`delta::page` + rendering) against copying
//!   the same bytes into a fresh buffer;
//! - over HTTP: following a round of 100-event pages against fetching a static body of the
//!   same size from the same HTTP stack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use chrono::NaiveDateTime;
use graph_sim::delta::{self, PageParams, Query, Resource, TokenState};
use graph_sim::generate::{random_event, GenerateSpec};
use graph_sim::present::Presentation;
use graph_sim::{SimServer, SimSettings};

const EVENTS: usize = 10_000;
const PAGE: usize = 100;

fn start() -> NaiveDateTime {
    NaiveDateTime::parse_from_str("2026-01-01T00:00:00", "%Y-%m-%dT%H:%M:%S").expect("time")
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .expect("sim");
    sim.state
        .add_secret_client("contoso", "bench", "bench-secret");
    let user = {
        let mut store = sim.state.store.write();
        let spec = GenerateSpec {
            users: 1,
            tenant: Some("contoso".into()),
            events_per_user: 0,
            extra_calendars: 0,
            extra_lists: 0,
            tasks_per_list: 0,
            ..Default::default()
        };
        let u = graph_sim::generate::generate(&mut store, &spec).expect("user")[0].clone();
        let mut rng = rand::rng();
        for _ in 0..EVENTS {
            let ev = random_event(&mut rng, start(), 60, 0.0, false);
            store.create_event(&u.id, "primary", ev).expect("event");
        }
        u
    };

    // In-process page assembly.
    let state = TokenState::initial(
        Arc::new(Query {
            user: user.id.clone(),
            resource: Resource::CalendarView {
                calendar: None,
                start: start(),
                end: start() + chrono::Duration::days(60),
            },
            select: None,
        }),
        "/v1.0/users/x/calendarView/delta".into(),
        "".into(),
        sim.state.store.read().seq,
    );
    let params = PageParams {
        size: PAGE,
        scan_limit: 5000,
        replay_probability: 0.0,
        empty_page_probability: 0.0,
        ..Default::default()
    };
    // As graph-cdc asks by default (`Prefer: IdType="ImmutableId"`): stored bytes as they are.
    let pres = Presentation {
        immutable_ids: true,
        ..Default::default()
    };
    let build = |st: &TokenState, pres: &Presentation| {
        let store = sim.state.store.read();
        let p = delta::page(&store, st, &params).expect("page");
        let body = graph_sim::http::render_page(
            "http://127.0.0.1",
            "v1.0",
            "event",
            "@odata.nextLink",
            "http://127.0.0.1/v1.0/users/x/calendarView/delta?$skiptoken=abc",
            &p.records,
            pres,
        );
        (p.next, body)
    };
    // Every page of the window, five times; the time per page.
    let rounds = |pres: &Presentation| {
        let (mut pages, mut bytes) = (0usize, 0usize);
        let t0 = Instant::now();
        for _ in 0..5 {
            let mut st = state.clone();
            loop {
                let (next, body) = build(&st, pres);
                pages += 1;
                bytes += body.len();
                std::hint::black_box(&body);
                match next {
                    Some(c) => st.cursor = Some(c),
                    None => break,
                }
            }
        }
        (t0.elapsed() / pages as u32, pages, bytes / pages)
    };
    let (page_time, pages, avg) = rounds(&pres);
    // Without `Prefer: IdType="ImmutableId"`: each event's immutable id swapped for its regular one.
    let (regular_time, _, _) = rounds(&Presentation::default());
    let sample = build(&state, &pres).1;
    let t0 = Instant::now();
    for _ in 0..pages {
        let mut s = String::with_capacity(sample.len());
        s.push_str(&sample);
        std::hint::black_box(&s);
    }
    let copy_time = t0.elapsed() / pages as u32;
    println!("simulator page of {PAGE} events ({avg} bytes on average), in-process:");
    println!("  build page:    {:>9.1} µs/page", us(page_time));
    println!(
        "  regular ids:   {:>9.1} µs/page   ratio {:.2}x of immutable ids",
        us(regular_time),
        ratio(regular_time, page_time)
    );
    println!(
        "  baseline copy: {:>9.1} µs/page   ratio {:.1}x",
        us(copy_time),
        ratio(page_time, copy_time)
    );

    // Over HTTP, same thread for client and server.
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/contoso/oauth2/v2.0/token", sim.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "bench"),
            ("client_secret", "bench-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let first = format!(
        "{}/v1.0/users/{}/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-03-02T00:00:00Z",
        sim.url(),
        user.user_principal_name
    );
    let mut http_pages = 0usize;
    let t0 = Instant::now();
    for _ in 0..3 {
        let mut url = first.clone();
        loop {
            let v: serde_json::Value = serde_json::from_slice(
                &http
                    .get(&url)
                    .bearer_auth(&token)
                    .header("Prefer", format!("odata.maxpagesize={PAGE}"))
                    .header("Prefer", "IdType=\"ImmutableId\"")
                    .send()
                    .await
                    .expect("page")
                    .bytes()
                    .await
                    .expect("body"),
            )
            .expect("json");
            http_pages += 1;
            match v["@odata.nextLink"].as_str() {
                Some(n) => url = n.to_string(),
                None => break,
            }
        }
    }
    let http_time = t0.elapsed() / http_pages as u32;
    // Baseline: the same HTTP stack serving a static body of the same size.
    let body = Arc::new(sample);
    let b = body.clone();
    let app = axum::Router::new().route(
        "/static",
        get(move || {
            let b = b.clone();
            async move { (*b).clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let t0 = Instant::now();
    for _ in 0..http_pages {
        let v: serde_json::Value = serde_json::from_slice(
            &http
                .get(format!("http://{addr}/static"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("static")
                .bytes()
                .await
                .expect("body"),
        )
        .expect("json");
        std::hint::black_box(v);
    }
    let static_time = t0.elapsed() / http_pages as u32;
    println!("over HTTP on loopback (client parses each page; one thread for both sides):");
    println!("  delta round:      {:>9.1} µs/page", us(http_time));
    println!(
        "  baseline static:  {:>9.1} µs/page   ratio {:.2}x",
        us(static_time),
        ratio(http_time, static_time)
    );
    println!(
        "  simulator's share: {:>8.1} µs/page",
        us(http_time.saturating_sub(static_time))
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}
