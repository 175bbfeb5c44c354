//! `graph-cdc validate` on good and bad configurations: bad ones exit non-zero with a
//! message naming the key; secrets never show.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_graph-cdc");

fn validate(toml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("graph-cdc-cfg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("validate").arg("--config").arg(&path);
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
        (format!("{with_secret}\n[[sources]]\nkind = \"calendar_view\"\nusers = [\"a@contoso.com\"]\nstart = \"2026-01-15T00:00:00Z\"\nend = \"2026-03-01T00:00:00Z\""), "overlaps"),
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
        !ok && err.contains("already a data or offsets topic"),
        "{err}"
    );
    let (ok, _, err) = validate(
        &format!("{GOOD}\n[errors]\ntolerance = \"all\"\ndead_letter_topic = \"graph-cdc.dlq\"\n"),
        &env,
    );
    assert!(ok, "{err}");
}
