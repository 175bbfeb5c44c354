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
