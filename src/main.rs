//! The `graph-cdc` command: parse the CLI, set up logging, hand over to the library.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use graph_cdc::worker::WorkerSpec;

/// jemalloc, not glibc's malloc: a worker's partitions are many small long-lived blocks
/// among a stream of short-lived ones (pages, requests), which glibc's per-thread arenas
/// fragment (issue 15: BENCHMARKS.md, "Where an idle partition's bytes go").
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): one arena, not four per core, so the partitions' small long-lived blocks
/// share slabs instead of leaving each thread's arena partly filled (235 instead of 242 MiB
/// at 100,000 idle partitions, the same CPU). Faster decay (`dirty_decay_ms:1000` with a
/// background thread) saved no memory and cost 1.8 points of a core (BENCHMARKS.md, issue 15).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &std::ffi::c_char = unsafe { &*c"narenas:1".as_ptr() };

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
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
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

#[cfg(feature = "demo")]
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

/// glibc's malloc still serves the C libraries (librdkafka's queues and buffers, OpenSSL,
/// curl), with an arena per thread up to eight per core: each of librdkafka's long-lived
/// threads (several per producer, one producer per shard) keeps freed memory in its own.
/// Two arenas, unless `MALLOC_ARENA_MAX` says otherwise (issue 15, BENCHMARKS.md).
fn limit_glibc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: a malloc tunable, set before the Kafka clients' threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    limit_glibc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(a) => validate(a),
        Command::Run(a) => run(a).await,
        #[cfg(feature = "demo")]
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

/// Logs to stderr: text (coloured on a terminal) or JSON, filtered by `RUST_LOG` or else
/// `filter`.
fn init_logging(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{filter},librdkafka=warn,rdkafka=warn").into());
    // Colours only on a terminal: a pod's or a file's log must not carry escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
    if let Some(hub) = &spec.notification_hub {
        hub.check()
            .map_err(graph_cdc::config::ConfigError::Invalid)?;
    }
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
    for g in settings.groups() {
        let members = graph_cdc::source::PartitionId::GroupMembers {
            group: g.group.clone(),
        };
        if writeln!(out, "{members}").is_err() {
            break;
        }
        eprintln!(
            "note: group {}: each transitive user member gets {} partitions, started as the group is listed (every graph.membership_interval)",
            g.group,
            g.templates.len()
        );
    }
    if partitions.iter().any(|p| p.user().contains('@')) {
        eprintln!(
            "note: users listed by principal name are looked up when the worker starts; their partitions and record keys carry the users' object ids"
        );
    }
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
    init_logging(&settings.log.filter, settings.log.format.as_str());
    let status = std::sync::Arc::new(graph_cdc::worker::WorkerStatus::default());
    status.per_partition_metrics.store(
        settings.server.per_partition_metrics,
        std::sync::atomic::Ordering::Relaxed,
    );
    // The token and TLS files, as validation read them; HTTPS when both TLS files are set
    // (a key that does not fit the certificate stops the start).
    let files = settings.server.files()?;
    let tls = files
        .tls
        .as_ref()
        .map(graph_cdc::server::TlsConfig::from_pem)
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", settings.server.listen))?;
    // Where the connector's other workers reach this one (for the connector-wide status).
    let bound = listener
        .local_addr()
        .context("server.listen: the bound address")?;
    let mut spec = spec;
    spec.sharding.advertised_url = Some(match &settings.server.advertised_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => graph_cdc::server::peers::default_advertised(
            bound,
            tls.is_some(),
            &settings.kafka.bootstrap_servers,
        ),
    });
    let chain: Vec<&[u8]> = files
        .tls
        .iter()
        .flat_map(|t| t.chain.iter().map(|c| c.as_ref()))
        .collect();
    let peers = graph_cdc::server::peers::client(&chain)
        .context("server.tls_cert_path: the peers' client")?;
    let (commands, rx) = tokio::sync::mpsc::channel(16);
    let state = std::sync::Arc::new(graph_cdc::server::ServerState {
        commands,
        auth_token: files.token.as_ref().map(|t| t.expose().to_string()),
        name: settings.name.clone(),
        worker_id: settings.worker_id(),
        config: settings.redacted_json(),
        status: status.clone(),
        peers,
    });
    tracing::info!(
        listen = %bound,
        advertised = spec.sharding.advertised_url.as_deref().unwrap_or_default(),
        https = tls.is_some(),
        token = state.auth_token.is_some(),
        "REST API listening"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(graph_cdc::server::serve_with(
        listener,
        state,
        tls,
        stop.clone().cancelled_owned(),
    ));
    let result = graph_cdc::worker::run_with_status(spec, status, rx, shutdown_signal()).await;
    stop.cancel();
    let _ = server.await;
    result?;
    Ok(())
}

#[cfg(feature = "demo")]
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
