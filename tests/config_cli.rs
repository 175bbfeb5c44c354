//! `graph-cdc validate` on good and bad configurations: bad ones exit non-zero with a
//! message naming the key; secrets never show.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_graph-cdc");

/// Runs `graph-cdc ARGS --config <toml>` with `env`: (exit ok, stdout, stderr).
fn graph_cdc(args: &[&str], toml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("graph-cdc-cfg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn validate(toml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    graph_cdc(&["validate"], toml, env)
}

const GOOD: &str = r#"
name = "cdc"
[graph]
tenant_id = "contoso"
client_id = "app"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[[sources]]
kind = "calendar_view"
users = ["a@contoso.com"]
start = "2026-01-01T00:00:00Z"
end = "2026-02-01T00:00:00Z"
[[sources]]
kind = "todo"
users = ["a@contoso.com"]
"#;

#[test]
fn the_example_and_demo_configs_validate() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/graph-cdc.example.toml"
    ))
    .unwrap();
    let example = example.replace(
        "client_secret_file = \"/run/secrets/graph-client-secret\"",
        "",
    );
    let (ok, out, err) = validate(
        &example,
        &[("GRAPH_CDC__GRAPH__CLIENT_SECRET", "TopSecret-123")],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(!out.contains("TopSecret") && !err.contains("TopSecret"));
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let (ok, out, err) = validate(&demo, &[]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 9);
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/compose.toml"))
            .unwrap();
    let (ok, out, err) = validate(&compose, &[]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 9);
}

#[test]
fn environment_overrides_the_file() {
    let (ok, _, err) = validate(GOOD, &[("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s")]);
    assert!(ok, "{err}");
    assert!(err.contains("Kafka 127.0.0.1:9092"));
    let (ok, _, err) = validate(
        GOOD,
        &[
            ("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s"),
            ("GRAPH_CDC__KAFKA__BOOTSTRAP_SERVERS", "k:1"),
        ],
    );
    assert!(ok && err.contains("Kafka k:1"), "{err}");
    let (ok, _, err) = validate(
        GOOD,
        &[
            ("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s"),
            ("GRAPH_CDC__GRAPH__PAGE_SIZE", "5000"),
        ],
    );
    assert!(!ok && err.contains("graph.page_size"), "{err}");
    // Closed sets through the environment too: the value is checked, the key named.
    let (ok, _, err) = validate(
        GOOD,
        &[
            ("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s"),
            ("GRAPH_CDC__GRAPH__CLOUD", "usgov-dod"),
        ],
    );
    assert!(
        ok && err.contains("Graph https://dod-graph.microsoft.us"),
        "{err}"
    );
    let (ok, _, err) = validate(
        GOOD,
        &[
            ("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s"),
            ("GRAPH_CDC__LOG__FORMAT", "yaml"),
        ],
    );
    assert!(
        !ok && err.contains("log.format") && err.contains("`json`"),
        "{err}"
    );
}

#[test]
fn bad_configurations_name_their_key() {
    let with_secret = GOOD.replace(
        "client_id = \"app\"",
        "client_id = \"app\"\nclient_secret = \"hush-hush\"",
    );
    let cases: Vec<(String, &str)> = vec![
        (with_secret.replace("[kafka]", "[kafka]\nbootstrap = \"x\""), "kafka.bootstrap"),
        (with_secret.replace("[graph]", "[graph]\npage_size = \"ten\""), "graph.page_size"),
        (with_secret.replace("[graph]", "[graph]\npoll_interval = \"often\""), "graph.poll_interval"),
        (with_secret.replace("[graph]", "[graph]\npage_size = 0"), "graph.page_size"),
        (with_secret.replace("end = \"2026-02-01T00:00:00Z\"", "end = \"2025-02-01T00:00:00Z\""), "sources[0].end"),
        (with_secret.replace("start = \"2026-01-01T00:00:00Z\"", "start = \"next monday\""), "sources[0].start"),
        (format!("{with_secret}\n[[sources]]\nkind = \"calendar_view\"\nusers = [\"a@contoso.com\"]\nstart = \"2026-01-15T00:00:00Z\"\nend = \"2026-03-01T00:00:00Z\""), "already tracked"),
        (GOOD.to_string(), "graph.client_secret"),
        (with_secret.replace("client_id = \"app\"", "client_id = \"app\"\ncertificate_path = \"/x.crt\"\nprivate_key_path = \"/x.key\""), "graph.client_secret"),
        (with_secret.replace("client_id = \"app\"", "client_id = \"app\"\ncloud = \"mars\""), "graph.cloud"),
        (format!("{with_secret}\n[log]\nformat = \"xml\""), "log.format"),
        (with_secret.replace("client_id = \"app\"", "client_id = \"app\"\ncloud = \"china\""), "sources[1].kind"),
        (with_secret.replace("users = [\"a@contoso.com\"]\n\"#", "").replace("kind = \"todo\"\nusers = [\"a@contoso.com\"]", "kind = \"todo\"\nusers = []"), "sources[1].users"),
        (with_secret.replace("client_id = \"app\"", "client_id = \"app\"\nclient_secret_file = \"/nope\""), "graph.client_secret"),
        (with_secret.replace("[[sources]]\nkind = \"todo\"", "[[sources]]\nkind = \"mail\""), "sources[1]"),
        (with_secret.replace("[graph]", "[grap]"), "grap"),
    ];
    for (toml, key) in cases {
        let (ok, _, err) = validate(&toml, &[]);
        assert!(!ok, "accepted:\n{toml}");
        assert!(err.contains(key), "'{key}' not named in: {err}");
        assert!(!err.contains("hush-hush"), "secret leaked: {err}");
    }
    let out = Command::new(BIN)
        .args(["validate", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml"));
}

/// `GOOD` with a TOML fragment appended to its `[kafka]` table.
fn with_kafka(fragment: &str) -> String {
    GOOD.replace(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        &format!("bootstrap_servers = \"127.0.0.1:9092\"\n{fragment}"),
    )
}

/// `GOOD` with a `[server]` table of a TOML fragment.
fn with_server(fragment: &str) -> String {
    GOOD.replace("[kafka]", &format!("[server]\n{fragment}\n[kafka]"))
}

#[test]
fn validate_builds_the_real_kafka_clients_and_names_what_librdkafka_refuses() {
    let env = [("GRAPH_CDC__GRAPH__CLIENT_SECRET", "TopSecret-123")];
    // Accepted: every secured setup the README shows, built into real clients.
    let dir = std::env::temp_dir().join(format!("graph-cdc-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, graph_cdc_testkit::fixtures::CLIENT_CERT_PEM).unwrap();
    for ok in [
        format!("[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"pw-Secret-9\"\n\"ssl.ca.location\" = \"{}\"", ca.display()),
        "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"KEY\"\n\"sasl.password\" = \"pw-Secret-9\"".into(),
        "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"OAUTHBEARER\"\n\"sasl.oauthbearer.method\" = \"oidc\"\n\"sasl.oauthbearer.client.id\" = \"app\"\n\"sasl.oauthbearer.client.secret\" = \"pw-Secret-9\"\n\"sasl.oauthbearer.token.endpoint.url\" = \"https://login.example.com/t/oauth2/v2.0/token\"".into(),
        "[kafka.producer_options]\n\"compression.type\" = \"lz4\"\n\"message.max.bytes\" = \"4000000\"\n[kafka.consumer_options]\n\"fetch.max.bytes\" = \"10000000\"".into(),
        "[kafka.options]\n\"compression.type\" = \"zstd\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"".into(),
    ] {
        let (ok_, _, err) = validate(&with_kafka(&ok), &env);
        assert!(ok_, "refused:\n{ok}\n{err}");
        assert!(!err.contains("pw-Secret-9"), "{err}");
    }
    // Refused, each naming its table and key, with librdkafka's reason.
    for (bad, names, why) in [
        ("[kafka.options]\n\"no.such.property\" = \"1\"", "kafka.options.\"no.such.property\"", "No such configuration property"),
        ("[kafka.producer_options]\n\"compression.type\" = \"brotli\"", "kafka.producer_options.\"compression.type\"", "Invalid value"),
        ("[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"GSSAPI\"", "sasl.mechanism", "GSSAPI"),
        ("[kafka.options]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"", "kafka.options.\"ssl.ca.location\"", ""),
        ("[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"OAUTHBEARER\"\n\"sasl.oauthbearer.method\" = \"oidc\"", "sasl.oauthbearer", ""),
        ("[kafka.options]\n\"transactional.id\" = \"mine\"", "kafka.options.\"transactional.id\"", "set by the connector"),
        ("[kafka.producer_options]\n\"enable.idempotence\" = \"false\"", "kafka.producer_options.\"enable.idempotence\"", "transactions"),
        ("[kafka.consumer_options]\n\"isolation.level\" = \"read_uncommitted\"", "kafka.consumer_options.\"isolation.level\"", "read_committed"),
        ("[kafka.options]\n\"bootstrap.servers\" = \"x:1\"", "kafka.options.\"bootstrap.servers\"", "kafka.bootstrap_servers"),
    ] {
        let (ok, _, err) = validate(&with_kafka(bad), &env);
        assert!(!ok, "accepted:\n{bad}");
        assert!(err.contains(names), "expected '{names}' in: {err}");
        assert!(err.contains(why), "expected '{why}' in: {err}");
    }
    // A password that librdkafka would echo in its refusal stays masked.
    let (ok, _, err) = validate(
        &with_kafka("[kafka.options]\n\"sasl.password\" = \"pw-Secret-9\"\n\"security.protocol\" = \"carrier-pigeon\""),
        &env,
    );
    assert!(!ok);
    assert!(
        err.contains("security.protocol") && !err.contains("pw-Secret-9"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_tolerance_all_needs_a_dead_letter_topic() {
    let env = [("GRAPH_CDC__GRAPH__CLIENT_SECRET", "TopSecret-123")];
    let (ok, _, err) = validate(&format!("{GOOD}\n[errors]\ntolerance = \"all\"\n"), &env);
    assert!(!ok && err.contains("errors.dead_letter_topic"), "{err}");
    let (ok, _, err) = validate(&format!("{GOOD}\n[errors]\ntolerance = \"some\"\n"), &env);
    assert!(!ok && err.contains("errors.tolerance"), "{err}");
    let (ok, _, err) = validate(
        &format!("{GOOD}\n[errors]\ntolerance = \"all\"\ndead_letter_topic = \"graph.events\"\n"),
        &env,
    );
    assert!(
        !ok && err.contains("already a data, offsets or state topic"),
        "{err}"
    );
    let (ok, _, err) = validate(
        &format!(
            "{GOOD}\n[errors]\ntolerance = \"all\"\ndead_letter_topic = \"graph-cdc-state\"\n"
        ),
        &env,
    );
    assert!(
        !ok && err.contains("already a data, offsets or state topic"),
        "{err}"
    );
    let (ok, _, err) = validate(
        &format!("{GOOD}\n[errors]\ntolerance = \"all\"\ndead_letter_topic = \"graph-cdc.dlq\"\n"),
        &env,
    );
    assert!(ok, "{err}");
}

#[test]
fn numeric_secrets_from_the_environment_stay_strings_and_never_show() {
    // What type-guessing used to read as an integer (refused with the token in the message)
    // and as a float (a client secret of `1.2e35`).
    let secrets = [
        ("GRAPH_CDC__SERVER__AUTH_TOKEN", "987654321"),
        ("GRAPH_CDC__GRAPH__CLIENT_SECRET", "12e34"),
    ];
    let public = with_server("listen = \"0.0.0.0:8083\"");
    let (ok, out, err) = validate(&public, &secrets);
    assert!(ok, "numeric secrets refused: {err}");
    // Numbers and booleans from the environment still read as numbers where a key wants one.
    let mut env = secrets.to_vec();
    env.extend([
        ("GRAPH_CDC__GRAPH__PAGE_SIZE", "500"),
        ("GRAPH_CDC__KAFKA__CREATE_TOPICS", "false"),
        ("GRAPH_CDC__GRAPH__POLL_JITTER", "0.25"),
    ]);
    let (ok2, out2, err2) = validate(&public, &env);
    assert!(ok2, "{err2}");
    let mut outputs = vec![out, err, out2, err2];
    // Every way a run can end early with these secrets set: bad values of other keys, a
    // secret of the wrong type in the file, a TOML syntax error on a secret's line, both
    // commands.
    // The environment overrides the file: a secret in the file comes with only the other
    // secret in the environment.
    let (token, secret) = (&secrets[..1], &secrets[1..]);
    type Case<'a> = (String, &'a str, &'a [(&'a str, &'a str)]);
    let bad: Vec<Case> = vec![
        (
            public.replace("[graph]", "[graph]\npage_size = 0"),
            "graph.page_size",
            &secrets,
        ),
        (
            public.replace("[graph]", "[graph]\nclient_secret = 987654321"),
            "graph.client_secret",
            token,
        ),
        (
            public.replace("[graph]", "[graph]\nclient_secret = 12e34"),
            "graph.client_secret",
            token,
        ),
        (
            public.replace(
                "listen = \"0.0.0.0:8083\"",
                "listen = \"0.0.0.0:8083\"\nauth_token = 987654321",
            ),
            "server.auth_token",
            secret,
        ),
        (
            public.replace(
                "listen = \"0.0.0.0:8083\"",
                "listen = \"0.0.0.0:8083\"\nauth_token = [\"987654321\"]",
            ),
            "server.auth_token",
            secret,
        ),
        (
            public.replace("[graph]", "[graph]\nclient_secret = \"987654321"),
            "line",
            token,
        ),
        (
            public.replace("listen = \"0.0.0.0:8083\"", "listen = \"0.0.0.0:99999\""),
            "server.listen",
            &secrets,
        ),
    ];
    for (toml, key, env) in &bad {
        for cmd in [&["validate"][..], &["run"][..]] {
            let (ok, out, err) = graph_cdc(cmd, toml, env);
            assert!(!ok, "{cmd:?} accepted:\n{toml}");
            assert!(err.contains(key), "{cmd:?}: '{key}' not named in: {err}");
            outputs.extend([out, err]);
        }
    }
    for (var, bad) in [
        ("GRAPH_CDC__GRAPH__PAGE_SIZE", "lots"),
        ("GRAPH_CDC__KAFKA__CREATE_TOPICS", "perhaps"),
    ] {
        let mut env = secrets.to_vec();
        env.push((var, bad));
        let (ok, out, err) = validate(&public, &env);
        assert!(
            !ok && err.contains(&var[11..].replace("__", ".").to_lowercase()),
            "{err}"
        );
        outputs.extend([out, err]);
    }
    for o in &outputs {
        for (_, s) in secrets {
            assert!(!o.contains(s), "secret {s} shown in:\n{o}");
        }
    }
}

#[test]
fn a_listener_other_hosts_reach_needs_a_token_or_an_explicit_opt_out() {
    let env = [("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s")];
    // The built-in default is loopback: no token needed.
    assert!(validate(GOOD, &env).0);
    for listen in [
        "0.0.0.0:8083",
        "[::]:8083",
        "10.1.2.3:8083",
        "graph-cdc.example.com:8083",
    ] {
        let (ok, _, err) = validate(&with_server(&format!("listen = \"{listen}\"")), &env);
        assert!(!ok, "{listen} accepted without a token");
        assert!(
            err.contains("server.auth_token") && err.contains("allow_unauthenticated"),
            "{err}"
        );
    }
    for listen in [
        "127.0.0.1:0",
        "[::1]:8083",
        "localhost:8083",
        "127.8.9.10:1",
    ] {
        let (ok, _, err) = validate(&with_server(&format!("listen = \"{listen}\"")), &env);
        assert!(ok, "{listen}: {err}");
    }
    let (ok, _, err) = validate(
        &with_server("listen = \"0.0.0.0:8083\"\nallow_unauthenticated = true"),
        &env,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = validate(
        &with_server("listen = \"0.0.0.0:8083\"\nauth_token = \"t0ken\""),
        &env,
    );
    assert!(ok, "{err}");
    // A token file: read at validation, empty refused, missing named.
    let dir = std::env::temp_dir().join(format!("graph-cdc-tok-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "file-token-Secret\n").unwrap();
    let (ok, _, err) = validate(
        &with_server(&format!(
            "listen = \"0.0.0.0:8083\"\nauth_token_file = \"{}\"",
            file.display()
        )),
        &env,
    );
    assert!(ok && !err.contains("file-token-Secret"), "{err}");
    std::fs::write(&file, "  \n").unwrap();
    let (ok, _, err) = validate(
        &with_server(&format!(
            "listen = \"0.0.0.0:8083\"\nauth_token_file = \"{}\"",
            file.display()
        )),
        &env,
    );
    assert!(
        !ok && err.contains("server.auth_token_file") && err.contains("empty"),
        "{err}"
    );
    let (ok, _, err) = validate(
        &with_server("listen = \"0.0.0.0:8083\"\nauth_token_file = \"/no/such/token\""),
        &env,
    );
    assert!(
        !ok && err.contains("server.auth_token_file") && err.contains("/no/such/token"),
        "{err}"
    );
    // TLS files: both or neither, and PEM.
    let (ok, _, err) = validate(
        &with_server(&format!("tls_cert_path = \"{}\"", file.display())),
        &env,
    );
    assert!(!ok && err.contains("server.tls_key_path"), "{err}");
    let (ok, _, err) = validate(
        &with_server(&format!(
            "tls_cert_path = \"{0}\"\ntls_key_path = \"{0}\"",
            file.display()
        )),
        &env,
    );
    assert!(
        !ok && err.contains("server.tls_cert_path") && err.contains("server.tls_key_path"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validation_names_bad_zones_topics_addresses_and_intervals() {
    let env = [("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s")];
    let graph = |line: &str| GOOD.replace("[graph]", &format!("[graph]\n{line}"));
    let refused: Vec<(String, &str, &str)> = vec![
        (
            graph("timezone = \"Mars/Olympus_Mons\""),
            "graph.timezone",
            "Mars/Olympus_Mons",
        ),
        (
            graph("timezone = \"europe/berlin\""),
            "graph.timezone",
            "Europe/Berlin",
        ),
        (
            graph("timezone = \"Pacific Standard Time (Mars)\""),
            "graph.timezone",
            "",
        ),
        (
            with_kafka("[kafka.topics]\nevents = \"graph events\""),
            "kafka.topics.events",
            "' '",
        ),
        (
            with_kafka("[kafka.topics]\nevents = \"..\""),
            "kafka.topics.events",
            "..",
        ),
        (
            with_kafka(&format!("[kafka.topics]\ntasks = \"{}\"", "t".repeat(250))),
            "kafka.topics.tasks",
            "249",
        ),
        (
            with_kafka("offsets_topic = \"graph.events\""),
            "kafka.topics.events",
            "offsets",
        ),
        (
            with_kafka("offsets_topic = \"\""),
            "kafka.offsets_topic",
            "empty",
        ),
        (
            with_kafka("state_topic = \"graph.events\""),
            "kafka.topics.events",
            "state topic",
        ),
        (
            with_kafka("state_topic = \"graph-cdc-offsets\""),
            "kafka.state_topic",
            "offsets",
        ),
        (
            with_kafka("state_topic = \"graph state\""),
            "kafka.state_topic",
            "' '",
        ),
        (
            with_kafka("[kafka.topics]\ncalendars = \"graph.lists\"\ntask_lists = \"graph.lists\""),
            "kafka.topics.task_lists",
            "calendars",
        ),
        (
            with_kafka("[kafka.topics]\nevents = \"graph.x_y\"\ntasks = \"graph.x.y\""),
            "kafka.topics.tasks",
            "'.' and '_'",
        ),
        (
            with_server("listen = \"0.0.0.0:99999\"\nallow_unauthenticated = true"),
            "server.listen",
            "out of range",
        ),
        (
            with_server("listen = \"http://0.0.0.0:8083\""),
            "server.listen",
            "scheme",
        ),
        (with_server("listen = \"8083\""), "server.listen", "port"),
        (
            with_server("listen = \"::1:8083\""),
            "server.listen",
            "brackets",
        ),
        (
            with_server("listen = \"256.1.1.1:8083\""),
            "server.listen",
            "not an IP address",
        ),
        (
            graph("poll_interval = \"1ms\""),
            "graph.poll_interval",
            "floor",
        ),
        (graph("poll_interval = \"4s\""), "graph.poll_interval", "5s"),
        (
            graph("request_timeout = \"10ms\""),
            "graph.request_timeout",
            "1s",
        ),
        (
            with_kafka("transaction_timeout = \"100ms\""),
            "kafka.transaction_timeout",
            "1s",
        ),
    ];
    for (toml, key, why) in refused {
        let (ok, _, err) = validate(&toml, &env);
        assert!(!ok, "accepted ({key}):\n{toml}");
        assert!(
            err.contains(key) && err.contains(why),
            "expected '{key}' and '{why}' in: {err}"
        );
    }
    let accepted: Vec<String> = vec![
        graph("timezone = \"W. Europe Standard Time\""),
        graph("timezone = \"Europe/Berlin\""),
        graph("timezone = \"Pacific Standard Time\""),
        graph("poll_interval = \"5s\""),
        // Against a simulator (not Microsoft's hosts) the floor does not apply.
        graph("base_url = \"http://127.0.0.1:9999\"\npoll_interval = \"300ms\""),
        // Data topics may share one; keys of different shapes do not collide.
        with_kafka("[kafka.topics]\nevents = \"graph.all\"\ntasks = \"graph.all\""),
        with_server("listen = \"127.0.0.1:65535\""),
    ];
    for toml in accepted {
        let (ok, _, err) = validate(&toml, &env);
        assert!(ok, "refused:\n{toml}\n{err}");
    }
}

#[test]
fn calendar_windows_one_per_calendar_and_as_long_as_graph_allows() {
    let env = [("GRAPH_CDC__GRAPH__CLIENT_SECRET", "s")];
    let view = |start: &str, end: &str, extra: &str| {
        GOOD.replace(
            "start = \"2026-01-01T00:00:00Z\"",
            &format!("start = \"{start}\"{extra}"),
        )
        .replace(
            "end = \"2026-02-01T00:00:00Z\"",
            &format!("end = \"{end}\""),
        )
    };
    for (start, end, extra) in [
        ("2026-01-01T00:00:00Z", "2027-01-01T00:00:00+01:00", ""),
        // Rolling: relative bounds, or one bound fixed.
        ("-30d", "+365d", ""),
        ("-90m", "+12h", "\nwindow_roll = \"15m\""),
        ("2026-01-01T00:00:00Z", "+365d", ""),
        (
            "2026-01-01T00:00:00Z",
            "2030-12-30T00:00:00Z",
            "\nwindow_roll = \"1h\"",
        ),
    ] {
        let (ok, _, err) = validate(&view(start, end, extra), &env);
        assert!(ok, "{start}/{end}{extra}: {err}");
    }
    for (start, end, extra, key, why) in [
        (
            "yesterday",
            "+1d",
            "",
            "sources[0].start",
            "signed duration",
        ),
        ("-1d", "+1w", "", "sources[0].end", "signed duration"),
        (
            "2026-02-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "",
            "sources[0].end",
            "after start",
        ),
        (
            "2020-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "",
            "sources[0].end",
            "1825",
        ),
        (
            "2026-01-01T00:00:00Z",
            "2026-02-01T00:00:00Z",
            "\nwindow_roll = \"500ms\"",
            "sources[0].window_roll",
            "1s",
        ),
        // Relative bounds are checked on today's window.
        ("-1000d", "+1000d", "", "sources[0].end", "1825"),
        (
            "+10d",
            "-10d",
            "",
            "sources[0].end",
            "today's window would be",
        ),
    ] {
        let (ok, _, err) = validate(&view(start, end, extra), &env);
        assert!(!ok, "accepted {start}/{end}{extra}");
        assert!(
            err.contains(key) && err.contains(why),
            "expected '{key}' and '{why}' in: {err}"
        );
    }
    // Two windows of one calendar, adjacent (not overlapping) or one rolling: refused, why said.
    {
        let (start, end) = ("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");
        let toml = format!(
            "{GOOD}\n[[sources]]\nkind = \"calendar_view\"\nusers = [\"A@contoso.com\"]\nstart = \"{start}\"\nend = \"{end}\""
        );
        let (ok, _, err) = validate(&toml, &env);
        assert!(!ok, "accepted a second window {start}/{end}");
        assert!(
            err.contains("sources[2]")
                && err.contains("already tracked by sources[0]")
                && err.contains("delete each other"),
            "{err}"
        );
    }
    // Another calendar of the same user is another partition: fine.
    let toml = format!(
        "{GOOD}\n[[sources]]\nkind = \"calendar_view\"\nusers = [\"a@contoso.com\"]\ncalendar = \"AAMkADk=\"\nstart = \"2026-01-01T00:00:00Z\"\nend = \"2026-02-01T00:00:00Z\""
    );
    let (ok, _, err) = validate(&toml, &env);
    assert!(ok, "{err}");
}
