//! A real Apache Kafka broker (KRaft, one node, loopback) for tests and benchmarks.
//!
//! The jars come from Maven Central through `crates/graph-cdc-testkit/kafka/pom.xml` into
//! `.cache/kafka/<version>/lib` (once; reruns reuse the cache). Each broker gets free ports
//! and a fresh log directory, and dies with the process that started it: a watchdog shell
//! kills the JVM when that process is gone, however it ended.
//!
//! Next to the plaintext listener (which inter-broker and controller traffic also use) the
//! broker has a `SASL_SSL` listener with SCRAM-SHA-512 users and an `SSL` listener that
//! requires client certificates (mTLS), with certificates made by [`super::certs`], and the
//! KRaft `StandardAuthorizer` so tests can deny a principal access ([`BrokerInfo::deny_write`]).
//!
//! Tests call [`shared_bootstrap`] (the plaintext address) or [`shared_broker`] (everything):
//! the broker the test script started for the whole run (`GRAPH_CDC_TEST_KAFKA`,
//! `GRAPH_CDC_TEST_KAFKA_INFO`), or one started lazily for this test binary.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

use super::certs;

/// The Kafka release the tests run against (verified: `kafka.Kafka`, `kafka.tools.StorageTool`).
pub const KAFKA_VERSION: &str = "4.1.1";

/// Environment variable naming a running broker for the whole test run.
pub const TEST_KAFKA_ENV: &str = "GRAPH_CDC_TEST_KAFKA";

/// Environment variable naming a JSON file with the [`BrokerInfo`] of that broker.
pub const TEST_KAFKA_INFO_ENV: &str = "GRAPH_CDC_TEST_KAFKA_INFO";

/// The SCRAM users created when the log directory is formatted (random passwords).
pub const SCRAM_USERS: [&str; 2] = ["alice", "bob"];

/// Kafka's ACL tool; in 4.x it lives in `kafka-tools`, which the broker jars do not include.
const ACL_COMMAND: &str = "org.apache.kafka.tools.AclCommand";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("resolving Kafka from Maven Central failed ({0}); is `mvn` installed? see crates/graph-cdc-testkit/kafka/pom.xml")]
    Resolve(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker did not come up within {timeout:?}; last log lines:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("formatting the log directory failed: {0}")]
    Format(String),
    #[error("making the test certificates failed: {0}")]
    Certs(String),
    #[error("changing ACLs failed: {0}")]
    Acl(String),
    #[error("broker info: {0}")]
    Info(String),
}

/// Where the jars are cached: `GRAPH_CDC_KAFKA_CACHE` or `.cache/kafka/<version>` in the repo.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GRAPH_CDC_KAFKA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/kafka")
                .join(KAFKA_VERSION)
        })
}

/// Resolves the broker's jars into the cache unless they are there already.
pub fn ensure_jars() -> Result<PathBuf, BrokerError> {
    let dir = cache_dir();
    let lib = dir.join("lib");
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/pom.xml");
    resolve_once(&dir.join(".complete"), || {
        mvn(Command::new("mvn")
            .args(["-q", "-B", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", lib.display()))
            .arg("-DincludeScope=runtime"))
    })?;
    Ok(lib)
}

/// Resolves `kafka-tools` (for [`BrokerInfo::deny_write`]) into the cache, next to `lib`: only
/// that jar, its dependencies are the broker's.
pub fn ensure_tools() -> Result<PathBuf, BrokerError> {
    let tools = cache_dir().join("tools");
    resolve_once(&cache_dir().join(".tools-complete"), || {
        mvn(Command::new("mvn")
            .args(["-q", "-B", "dependency:copy"])
            .arg(format!(
                "-Dartifact=org.apache.kafka:kafka-tools:{KAFKA_VERSION}"
            ))
            .arg(format!("-DoutputDirectory={}", tools.display())))
    })?;
    Ok(tools)
}

/// Runs `resolve` unless `done` exists, then creates `done`; one resolver at a time across
/// processes (tests run in parallel processes under nextest).
fn resolve_once(
    done: &Path,
    resolve: impl FnOnce() -> Result<(), BrokerError>,
) -> Result<(), BrokerError> {
    if done.exists() {
        return Ok(());
    }
    let dir = done.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let lock = dir.join(".lock");
    let started = Instant::now();
    loop {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if done.exists() => return Ok(()),
            Err(_) if started.elapsed() > Duration::from_secs(600) => {
                let _ = fs::remove_file(&lock);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let result = resolve();
    let _ = fs::remove_file(&lock);
    result?;
    fs::write(done, KAFKA_VERSION)?;
    Ok(())
}

fn mvn(cmd: &mut Command) -> Result<(), BrokerError> {
    let out = cmd
        .output()
        .map_err(|e| BrokerError::Resolve(e.to_string()))?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        return Err(BrokerError::Resolve(
            lines[lines.len().saturating_sub(20)..].join("\n"),
        ));
    }
    Ok(())
}

/// `n` distinct free ports: all are held at once, so none is handed out twice.
fn free_ports<const N: usize>() -> Result<[u16; N], BrokerError> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn random_password() -> String {
    use rand::Rng as _;
    // Alphanumeric: StorageTool's `[name=…,password=…]` syntax needs no quoting then.
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// A running single-node broker; killed on drop.
pub struct KafkaBroker {
    dir: PathBuf,
    lib: PathBuf,
    port: u16,
    info: BrokerInfo,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Resolves the jars if needed, makes certificates, formats a fresh log directory (with the
    /// SCRAM users) and starts the broker.
    pub fn start() -> Result<Self, BrokerError> {
        let lib = ensure_jars()?;
        let tools = ensure_tools()?;
        let dir =
            std::env::temp_dir().join(format!("graph-cdc-kafka-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(dir.join("data"))?;
        let [port, cport, sasl_port, ssl_port] = free_ports()?;
        // The format does not read the certificates: make them while its JVM starts.
        let (made, scram_users) = std::thread::scope(|s| {
            let made = s.spawn(|| certs::generate(&dir.join("certs")));
            let users =
                Self::write_config_and_format(&dir, &lib, [port, cport, sasl_port, ssl_port]);
            let made = made.join().expect("certificate thread")?;
            users.map(|users| (made, users))
        })?;
        let info = BrokerInfo {
            plaintext: format!("127.0.0.1:{port}"),
            sasl_ssl: format!("127.0.0.1:{sasl_port}"),
            ssl: format!("127.0.0.1:{ssl_port}"),
            ca_pem: made.ca,
            client_cert_pem: made.client_cert,
            client_key_pem: made.client_key,
            untrusted_ca_pem: made.untrusted_ca,
            client_principal: format!("User:{}", certs::CLIENT_CN),
            scram_users,
            classpath: format!("{}/*:{}/*", lib.display(), tools.display()),
        };
        let mut b = Self {
            dir,
            lib,
            port,
            info,
            child: None,
        };
        b.launch()?;
        Ok(b)
    }

    /// Writes `server.properties` and the log configuration, and formats the log directory with
    /// the SCRAM users; returns the users.
    fn write_config_and_format(
        dir: &Path,
        lib: &Path,
        [port, cport, sasl_port, ssl_port]: [u16; 4],
    ) -> Result<Vec<(String, String)>, BrokerError> {
        let certs = dir.join("certs");
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},\
               SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_port},\
               SSL://127.0.0.1:{ssl_port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,\
               SASL_SSL:SASL_SSL,SSL:SSL\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={keystore}\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={ca}\n\
             listener.name.ssl.ssl.client.auth=required\n\
             ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT\n\
             listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
               org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
             allow.everyone.if.no.acl.found=true\n\
             super.users=User:ANONYMOUS\n\
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
            keystore = certs.join("broker-keystore.pem").display(),
            ca = certs.join("ca.pem").display(),
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
        // One id in 64 would start with '-', which StorageTool's parser takes for an option
        // (Kafka's own `Uuid.randomUuid` skips those too).
        let cluster_id = loop {
            use base64::Engine as _;
            let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(uuid::Uuid::new_v4().as_bytes());
            if !id.starts_with('-') {
                break id;
            }
        };
        let users: Vec<(String, String)> = SCRAM_USERS
            .iter()
            .map(|u| (u.to_string(), random_password()))
            .collect();
        let mut format = Command::new("java");
        format
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
            .arg(dir.join("server.properties"));
        // In KRaft, SCRAM credentials are metadata records: the format writes the first ones.
        for (name, password) in &users {
            format
                .arg("--add-scram")
                .arg(format!("SCRAM-SHA-512=[name={name},password={password}]"));
        }
        let out = format.output()?;
        if !out.status.success() {
            return Err(BrokerError::Format(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(users)
    }

    fn launch(&mut self) -> Result<(), BrokerError> {
        // The watchdog: the JVM dies with this process, however it ends, and the directory
        // (data, keys) goes then too: a shared broker lives in a static, which never drops.
        let script = format!(
            "java -Xms256m -Xmx768m -Dlog4j2.configurationFile='{log4j}' -cp '{lib}/*' kafka.Kafka '{props}' \
               >>'{out}' 2>&1 & j=$!; echo $j > '{pidfile}'; \
             trap 'kill -9 $j 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $j 2>/dev/null; do sleep 0.5; done; \
             kill -9 $j 2>/dev/null; wait; \
             kill -0 {parent} 2>/dev/null || rm -rf '{dir}'",
            dir = self.dir.display(),
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
                    // All listeners open together; checking the secured ones costs nothing.
                    let secured = [&self.info.sasl_ssl, &self.info.ssl].into_iter().all(|a| {
                        a.parse().is_ok_and(|a| {
                            TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
                        })
                    });
                    if !md.brokers().is_empty() && secured {
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

    /// `127.0.0.1:PORT` of the plaintext listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log directory (`log.dirs`): one `<topic>-<partition>` directory per
    /// partition (benchmarks measure bytes on disk there).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Every listener, the certificates and the SCRAM users.
    pub fn info(&self) -> BrokerInfo {
        self.info.clone()
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

/// What a client needs to reach a running test broker on each listener, as a test process
/// sees it (the test script hands it over as JSON, see [`TEST_KAFKA_INFO_ENV`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// `127.0.0.1:PORT`: no TLS, no authentication; principal `User:ANONYMOUS`, a super user.
    pub plaintext: String,
    /// `127.0.0.1:PORT`: TLS, SASL SCRAM-SHA-512 with [`BrokerInfo::scram_users`].
    pub sasl_ssl: String,
    /// `127.0.0.1:PORT`: TLS with a required client certificate (mTLS).
    pub ssl: String,
    /// The CA that signed the broker's certificate (SAN `IP:127.0.0.1,DNS:localhost`) and the
    /// client's.
    pub ca_pem: PathBuf,
    /// The mTLS client's certificate and PKCS#8 key (CN `graph-cdc-client`).
    pub client_cert_pem: PathBuf,
    pub client_key_pem: PathBuf,
    /// The principal the broker gives the mTLS client: `User:graph-cdc-client`.
    pub client_principal: String,
    /// A CA that signed nothing the broker uses.
    pub untrusted_ca_pem: PathBuf,
    /// (name, password) of each SCRAM-SHA-512 user; principal `User:<name>`.
    pub scram_users: Vec<(String, String)>,
    /// The Java class path of the broker's jars and `kafka-tools` (for ACL changes).
    pub classpath: String,
}

impl BrokerInfo {
    /// Reads the JSON [`BrokerInfo::save`] wrote.
    pub fn load(path: &Path) -> Result<Self, BrokerError> {
        let text = fs::read_to_string(path)
            .map_err(|e| BrokerError::Info(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| BrokerError::Info(format!("{}: {e}", path.display())))
    }

    /// Writes this as JSON.
    pub fn save(&self, path: &Path) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string_pretty(self).map_err(|e| BrokerError::Info(e.to_string()))?;
        fs::write(path, json)?;
        Ok(())
    }

    /// The password of SCRAM user `user`.
    pub fn scram_password(&self, user: &str) -> Option<&str> {
        self.scram_users
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, password)| password.as_str())
    }

    /// librdkafka options for the `SASL_SSL` listener ([`BrokerInfo::sasl_ssl`], not included)
    /// as SCRAM user `user`; hostname verification stays at librdkafka's default, on. Panics if `user` is not one of
    /// [`BrokerInfo::scram_users`]: a test bug.
    pub fn sasl_scram_options(&self, user: &str) -> Vec<(String, String)> {
        let password = self
            .scram_password(user)
            .unwrap_or_else(|| panic!("no SCRAM user {user:?} on the test broker"));
        options(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", password),
            ("ssl.ca.location", &self.ca_pem.display().to_string()),
        ])
    }

    /// librdkafka options for the mTLS listener ([`BrokerInfo::ssl`], not included) with the
    /// client certificate.
    pub fn mtls_options(&self) -> Vec<(String, String)> {
        options(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", &self.ca_pem.display().to_string()),
            (
                "ssl.certificate.location",
                &self.client_cert_pem.display().to_string(),
            ),
            (
                "ssl.key.location",
                &self.client_key_pem.display().to_string(),
            ),
        ])
    }

    /// Denies `principal` (e.g. `User:bob`) writing to `topic`, on the running broker; returns
    /// once the broker enforces it.
    ///
    /// Everyone else keeps full access to the topic: with `allow.everyone.if.no.acl.found`, a
    /// topic that has any ACL is closed to principals no ACL allows, so an ALLOW for `User:*`
    /// goes with the DENY (a DENY wins over an ALLOW).
    pub fn deny_write(&self, principal: &str, topic: &str) -> Result<(), BrokerError> {
        let (t, all) = ("--topic", "--operation");
        self.acl(&["--add", "--allow-principal", "User:*", all, "All", t, topic])?;
        let mut listed = self.acl(&[
            "--add",
            "--deny-principal",
            principal,
            all,
            "Write",
            t,
            topic,
        ])?;
        // The broker applies ACLs from the metadata log a moment after the controller commits
        // them, and lists them as it applies them: wait until it lists both. (The tool lists a
        // topic's ACLs after adding; the first try usually shows them already.)
        let expected = [
            "(principal=User:*, host=*, operation=ALL, permissionType=ALLOW)".to_string(),
            format!("(principal={principal}, host=*, operation=WRITE, permissionType=DENY)"),
        ];
        let deadline = Instant::now() + Duration::from_secs(30);
        while !expected.iter().all(|acl| listed.contains(acl.as_str())) {
            if Instant::now() > deadline {
                return Err(BrokerError::Acl(format!(
                    "the broker does not list {expected:?} for {topic}:\n{listed}"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
            listed = self.acl(&["--list", t, topic])?;
        }
        Ok(())
    }

    /// Runs Kafka's ACL tool over the plaintext listener (a super user); its output.
    fn acl(&self, args: &[&str]) -> Result<String, BrokerError> {
        let out = Command::new("java")
            // A short-lived client JVM: start fast, never mind peak speed.
            .args([
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",
                "-XX:+UseSerialGC",
                "-cp",
            ])
            .arg(&self.classpath)
            .args([ACL_COMMAND, "--bootstrap-server", &self.plaintext])
            .args(args)
            .output()
            .map_err(|e| BrokerError::Acl(format!("running java: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(BrokerError::Acl(format!(
                "{ACL_COMMAND} {args:?}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(stdout)
    }
}

fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The broker this test process started on first use, shared by [`shared_bootstrap`] and
/// [`shared_broker`]. Statics are never dropped: the watchdog ends the JVM with the process.
fn lazy_broker() -> Result<&'static KafkaBroker, String> {
    static SHARED: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| KafkaBroker::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The bootstrap address of the broker tests share: the run's (`GRAPH_CDC_TEST_KAFKA`) or one
/// started for this process on first use.
pub fn shared_bootstrap() -> Result<String, String> {
    if let Ok(b) = std::env::var(TEST_KAFKA_ENV) {
        if !b.trim().is_empty() {
            return Ok(b);
        }
    }
    lazy_broker().map(KafkaBroker::bootstrap)
}

/// Everything about the broker tests share: the run's (`GRAPH_CDC_TEST_KAFKA_INFO`, a JSON
/// file) or the one [`shared_bootstrap`] starts for this process.
pub fn shared_broker() -> Result<BrokerInfo, String> {
    match std::env::var_os(TEST_KAFKA_INFO_ENV) {
        Some(path) if !path.is_empty() => {
            BrokerInfo::load(Path::new(&path)).map_err(|e| e.to_string())
        }
        _ => lazy_broker().map(KafkaBroker::info),
    }
}
