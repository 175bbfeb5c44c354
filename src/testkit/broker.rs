//! A real Apache Kafka broker (KRaft, one node, loopback) for tests and benchmarks.
//!
//! The jars come from Maven Central through `testbed/kafka/pom.xml` into
//! `.cache/kafka/<version>/lib` (once; reruns reuse the cache). Each broker gets free ports
//! and a fresh log directory, and dies with the process that started it: a watchdog shell
//! kills the JVM when that process is gone, however it ended.
//!
//! Tests call [`shared_bootstrap`]: the broker the test script started for the whole run
//! (`GRAPH_CDC_TEST_KAFKA`), or one started lazily for this test binary.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

/// The Kafka release the tests run against (verified: `kafka.Kafka`, `kafka.tools.StorageTool`).
pub const KAFKA_VERSION: &str = "4.1.1";

/// Environment variable naming a running broker for the whole test run.
pub const TEST_KAFKA_ENV: &str = "GRAPH_CDC_TEST_KAFKA";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("resolving Kafka from Maven Central failed ({0}); is `mvn` installed? see testbed/kafka/pom.xml")]
    Resolve(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker did not come up within {timeout:?}; last log lines:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("formatting the log directory failed: {0}")]
    Format(String),
}

/// Where the jars are cached: `GRAPH_CDC_KAFKA_CACHE` or `.cache/kafka/<version>` in the repo.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GRAPH_CDC_KAFKA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/kafka")
                .join(KAFKA_VERSION)
        })
}

/// Resolves the broker's jars into the cache unless they are there already.
pub fn ensure_jars() -> Result<PathBuf, BrokerError> {
    let dir = cache_dir();
    let lib = dir.join("lib");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(lib);
    }
    fs::create_dir_all(&dir)?;
    // One resolver at a time across processes.
    let lock = dir.join(".lock");
    let started = Instant::now();
    loop {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if done.exists() => return Ok(lib),
            Err(_) if started.elapsed() > Duration::from_secs(600) => {
                let _ = fs::remove_file(&lock);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/kafka/pom.xml");
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", lib.display()))
        .arg("-DincludeScope=runtime")
        .output();
    let _ = fs::remove_file(&lock);
    let out = out.map_err(|e| BrokerError::Resolve(e.to_string()))?;
    if !out.status.success() {
        let tail = String::from_utf8_lossy(&out.stdout);
        return Err(BrokerError::Resolve(
            tail.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        ));
    }
    fs::write(&done, KAFKA_VERSION)?;
    Ok(lib)
}

fn free_port() -> Result<u16, BrokerError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running single-node broker; killed on drop.
pub struct KafkaBroker {
    dir: PathBuf,
    lib: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Resolves the jars if needed, formats a fresh log directory and starts the broker.
    pub fn start() -> Result<Self, BrokerError> {
        let lib = ensure_jars()?;
        let dir =
            std::env::temp_dir().join(format!("graph-cdc-kafka-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(dir.join("data"))?;
        let port = free_port()?;
        let cport = free_port()?;
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=3\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             log.cleaner.backoff.ms=1000\n\
             log.retention.check.interval.ms=10000\n",
            data = dir.join("data").display()
        );
        fs::write(dir.join("server.properties"), props)?;
        fs::write(
            dir.join("log4j2.properties"),
            format!(
                "rootLogger.level=WARN\nrootLogger.appenderRef.f.ref=F\nappender.f.type=File\nappender.f.name=F\n\
                 appender.f.fileName={}\nappender.f.layout.type=PatternLayout\nappender.f.layout.pattern=%d %p %c: %m%n\n",
                dir.join("broker.log").display()
            ),
        )?;
        let cluster_id = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        };
        let out = Command::new("java")
            .arg("-cp")
            .arg(format!("{}/*", lib.display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                dir.join("log4j2.properties").display()
            ))
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                &cluster_id,
                "-c",
            ])
            .arg(dir.join("server.properties"))
            .output()?;
        if !out.status.success() {
            return Err(BrokerError::Format(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut b = Self {
            dir,
            lib,
            port,
            child: None,
        };
        b.launch()?;
        Ok(b)
    }

    fn launch(&mut self) -> Result<(), BrokerError> {
        // The watchdog: the JVM dies with this process, however it ends.
        let script = format!(
            "java -Xms256m -Xmx768m -Dlog4j2.configurationFile='{log4j}' -cp '{lib}/*' kafka.Kafka '{props}' \
               >>'{out}' 2>&1 & j=$!; echo $j > '{pidfile}'; \
             trap 'kill -9 $j 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $j 2>/dev/null; do sleep 0.5; done; \
             kill -9 $j 2>/dev/null; wait",
            log4j = self.dir.join("log4j2.properties").display(),
            lib = self.lib.display(),
            props = self.dir.join("server.properties").display(),
            out = self.dir.join("stdout.log").display(),
            pidfile = self.dir.join("java.pid").display(),
            parent = std::process::id(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(90))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), BrokerError> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let consumer: Result<BaseConsumer, _> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", self.bootstrap())
                .set("log_level", "0")
                .create();
            if let Ok(c) = consumer {
                if let Ok(md) = c.fetch_metadata(None, Duration::from_secs(2)) {
                    if !md.brokers().is_empty() {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(BrokerError::NotReady {
            timeout,
            log: self.log_tail(40),
        })
    }

    /// The last `n` lines of the broker's logs.
    pub fn log_tail(&self, n: usize) -> String {
        let mut text = String::new();
        for f in ["stdout.log", "broker.log"] {
            if let Ok(mut file) = fs::File::open(self.dir.join(f)) {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
                let _ = file.read_to_string(&mut text);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal_jvm(&self, sig: i32) -> bool {
        let pid = fs::read_to_string(self.dir.join("java.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        match pid {
            // SAFETY: sending a signal to a pid has no memory-safety implications.
            Some(pid) => unsafe { libc::kill(pid, sig) == 0 },
            None => false,
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing answers, as in a
    /// network partition. [`KafkaBroker::thaw`] resumes it.
    pub fn freeze(&self) -> bool {
        self.signal_jvm(libc::SIGSTOP)
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) -> bool {
        self.signal_jvm(libc::SIGCONT)
    }

    /// Kills the broker (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        self.signal_jvm(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts the broker again on the same ports and data.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop();
        self.launch()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The bootstrap address of the broker tests share: the run's (`GRAPH_CDC_TEST_KAFKA`) or one
/// started for this process on first use.
pub fn shared_bootstrap() -> Result<String, String> {
    if let Ok(b) = std::env::var(TEST_KAFKA_ENV) {
        if !b.trim().is_empty() {
            return Ok(b);
        }
    }
    static SHARED: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| KafkaBroker::start().map_err(|e| e.to_string()))
        .as_ref()
        .map(KafkaBroker::bootstrap)
        .map_err(Clone::clone)
}
