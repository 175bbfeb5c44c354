//! The `graph-cdc` command: parse the CLI, set up logging, hand over to the library.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use graph_cdc::sim;
use graph_cdc::worker::WorkerSpec;

#[derive(Parser)]
#[command(
    name = "graph-cdc",
    version,
    about = "Microsoft Graph delta queries into Kafka, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: track the configured partitions into Kafka.
    Run(ConfigArgs),
    /// Check a configuration and print the partitions it would track.
    Validate(ValidateArgs),
    /// Run the whole pipeline on embedded parts (simulator + in-process mock Kafka) and
    /// print each committed record.
    Demo(DemoArgs),
    /// Serve the Graph simulator (the test bed's fake Microsoft Graph).
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML configuration file (layered over the defaults, under GRAPH_CDC__… variables).
    #[arg(long, short)]
    config: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct ValidateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also connect to Kafka with these settings (credentials, certificates) and report
    /// librdkafka's reason, naming the broker, if it cannot get in.
    #[arg(long)]
    connect: bool,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = graph_cdc::config::parse_duration)]
    duration: Option<Duration>,
    /// Demo users to generate.
    #[arg(long, default_value_t = 3)]
    users: usize,
    /// Random changes per second.
    #[arg(long, default_value_t = 3)]
    changes: usize,
}

#[derive(clap::Args)]
struct SimulateArgs {
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
    /// Interval between bursts of random changes.
    #[arg(long, default_value = "2s", value_parser = graph_cdc::config::parse_duration)]
    mutate_interval: Duration,
    /// Base URL to put in links (default: from the request's Host header).
    #[arg(long)]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(a) => validate(a),
        Command::Run(a) => run(a).await,
        Command::Simulate(a) => {
            init_logging("info", "text");
            simulate(a).await
        }
        Command::Demo(a) => {
            init_logging("info", "text");
            demo(a).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr: text or JSON, filtered by `RUST_LOG` or else `filter`.
fn init_logging(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{filter},librdkafka=warn,rdkafka=warn").into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load(a: &ConfigArgs) -> anyhow::Result<graph_cdc::config::Settings> {
    Ok(graph_cdc::config::Settings::load(a.config.as_deref())?)
}

/// Settings that load, and whose Kafka clients librdkafka accepts.
fn load_checked(a: &ConfigArgs) -> anyhow::Result<(graph_cdc::config::Settings, WorkerSpec)> {
    let settings = load(a)?;
    let spec = WorkerSpec::from_settings(&settings)?;
    graph_cdc::sink::clients::check(&spec.sink).map_err(graph_cdc::config::ConfigError::Invalid)?;
    Ok((settings, spec))
}

fn validate(a: ValidateArgs) -> anyhow::Result<()> {
    let (settings, spec) = load_checked(&a.config)?;
    let partitions = settings.partitions();
    let mut out = std::io::stdout().lock();
    for p in &partitions {
        // A closed pipe (`| head`) is not an error worth a panic.
        if writeln!(out, "{p}").is_err() {
            break;
        }
    }
    eprintln!(
        "configuration OK: connector '{}', {} partitions (plus the task partitions of each user's To Do lists), Graph {}, Kafka {}, transactional.id {}",
        settings.name,
        partitions.len(),
        settings.graph.graph_base_url(),
        settings.kafka.bootstrap_servers,
        settings.transactional_id()
    );
    if a.connect {
        graph_cdc::sink::health::probe(&spec.sink.admin_config(), Duration::from_secs(10))
            .map_err(|why| anyhow::anyhow!("cannot reach Kafka: {why}"))?;
        eprintln!(
            "Kafka OK: connected to {}",
            settings.kafka.bootstrap_servers
        );
    }
    Ok(())
}

async fn run(a: ConfigArgs) -> anyhow::Result<()> {
    let (settings, spec) = load_checked(&a)?;
    init_logging(&settings.log.filter, &settings.log.format);
    let status = std::sync::Arc::new(graph_cdc::worker::WorkerStatus::default());
    status.per_partition_metrics.store(
        settings.server.per_partition_metrics,
        std::sync::atomic::Ordering::Relaxed,
    );
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", settings.server.listen))?;
    let (commands, rx) = tokio::sync::mpsc::channel(16);
    let auth_token = match (
        &settings.server.auth_token,
        &settings.server.auth_token_file,
    ) {
        (Some(t), _) => Some(t.expose().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("server.auth_token_file: cannot read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let state = std::sync::Arc::new(graph_cdc::server::ServerState {
        commands,
        auth_token,
        name: settings.name.clone(),
        worker_id: settings.worker_id(),
        config: settings.redacted_json(),
        status: status.clone(),
        kafka: spec.sink.admin_config(),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(graph_cdc::server::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
    ));
    let result = graph_cdc::worker::run_with_status(spec, status, rx, shutdown_signal()).await;
    stop.cancel();
    let _ = server.await;
    result?;
    Ok(())
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let opts = graph_cdc::demo::DemoOptions {
        users: a.users,
        changes_per_second: a.changes,
        ..Default::default()
    };
    let stop = async move {
        match a.duration {
            Some(d) => {
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown_signal() => {} }
            }
            None => shutdown_signal().await,
        }
    };
    graph_cdc::demo::run(opts, stop, std::io::stdout()).await?;
    Ok(())
}

async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let settings = sim::SimSettings {
        public_url: a.public_url.clone(),
        ..Default::default()
    };
    let state = sim::SimState::new(settings);
    state.add_secret_client(&a.tenant, &a.client_id, &a.client_secret);
    if a.users > 0 {
        let spec = sim::generate::GenerateSpec {
            users: a.users,
            tenant: Some(a.tenant.clone()),
            ..Default::default()
        };
        let users = sim::generate::generate(&mut state.store.write(), &spec)?;
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
                let spec = sim::generate::MutateSpec {
                    count: a.mutations,
                    ..Default::default()
                };
                let s = sim::generate::mutate(&mut st.store.write(), &spec);
                tracing::debug!(tenant = %tenant, ops = ?s.ops, "applied random changes");
            }
        });
    }
    sim::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
