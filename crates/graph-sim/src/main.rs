//! The `graph-sim` command: serve the Graph simulator over HTTP (the compose stack's fake
//! Microsoft Graph, and a target for trying graph-cdc without a tenant).

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use graph_sim::generate::{GenerateSpec, MutateSpec};
use graph_sim::{SimSettings, SimState};

/// Serve the Graph simulator: the delta endpoints, the token endpoint and `/_sim` control.
#[derive(Parser)]
#[command(name = "graph-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Tenant id the demo app is registered in.
    #[arg(long, default_value = "contoso")]
    tenant: String,
    /// Client id of the demo app.
    #[arg(long, default_value = "graph-cdc")]
    client_id: String,
    /// Client secret of the demo app (prefer the environment variable).
    #[arg(
        long,
        env = "GRAPH_CDC_SIM_CLIENT_SECRET",
        default_value = "sim-secret",
        hide_env_values = true
    )]
    client_secret: String,
    /// Create this many demo users with calendars, events, lists and tasks.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Apply this many random changes every `--mutate-interval` (0: none).
    #[arg(long, default_value_t = 0)]
    mutations: usize,
    /// Interval between bursts of random changes (`250ms`, `2s`, `5m`, `1h`).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    mutate_interval: Duration,
    /// Base URL to put in links (default: from the request's Host header).
    #[arg(long)]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match serve(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `250ms`, `2s`, `5m` or `1h`: graph-cdc's duration units, in whole numbers (the simulator
/// does not depend on the product, so it has this small parser of its own).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (use 250ms, 2s, 5m, 1h)"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        u => return Err(format!("unknown unit '{u}' in '{s}' (use ms, s, m or h)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{s}' is out of range"))
}

async fn serve(a: Args) -> anyhow::Result<()> {
    let settings = SimSettings {
        public_url: a.public_url.clone(),
        ..Default::default()
    };
    let state = SimState::new(settings);
    state.add_secret_client(&a.tenant, &a.client_id, &a.client_secret);
    if a.users > 0 {
        let spec = GenerateSpec {
            users: a.users,
            tenant: Some(a.tenant.clone()),
            ..Default::default()
        };
        let users = graph_sim::generate::generate(&mut state.store.write(), &spec)?;
        tracing::info!(users = users.len(), "generated demo data");
    }
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tenant = %a.tenant, client_id = %a.client_id, "Graph simulator listening; control API under /_sim");
    if a.mutations > 0 {
        let st = state.clone();
        let tenant = a.tenant.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(a.mutate_interval).await;
                let spec = MutateSpec {
                    count: a.mutations,
                    ..Default::default()
                };
                let s = graph_sim::generate::mutate(&mut st.store.write(), &spec);
                tracing::debug!(tenant = %tenant, ops = ?s.ops, "applied random changes");
            }
        });
    }
    graph_sim::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
}
