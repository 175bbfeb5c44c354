//! Loading, defaults, redaction and key-naming errors.

use std::time::Duration;

use super::*;
use crate::sink::SinkOptions;

const OK: &str = r#"
    [graph]
    tenant_id = "contoso"
    client_id = "app"
    client_secret = "s3cr3t-value"
    [kafka.options]
    "security.protocol" = "SASL_SSL"
    "sasl.password" = "hunter2"
    [kafka.consumer_options]
    "ssl.key.password" = "consumer-hunter3"
    [kafka.producer_options]
    "sasl.oauthbearer.client.secret" = "producer-hunter4"
    [[sources]]
    kind = "calendar_view"
    users = ["a@contoso.com", "b@contoso.com"]
    start = "2026-01-01T00:00:00+01:00"
    end = "2027-01-01T00:00:00Z"
    [[sources]]
    kind = "todo"
    users = ["a@contoso.com"]
"#;

fn err(toml: &str) -> String {
    Settings::from_toml_str(toml, false)
        .expect_err("should be refused")
        .to_string()
}

#[test]
fn defaults_partitions_and_redaction() {
    let s = Settings::from_toml_str(OK, false).unwrap();
    assert_eq!(s.graph.page_size, 100);
    assert_eq!(s.graph.poll_interval.0, Duration::from_secs(60));
    assert!(s.graph.immutable_ids && s.graph.client_options().immutable_ids);
    assert_eq!(
        s.graph.reconcile_interval.0,
        Duration::from_secs(7 * 86_400)
    );
    assert_eq!(s.graph.max_pages_per_round, 10_000);
    let off = OK.replace("[graph]", "[graph]\nimmutable_ids = false");
    let off = Settings::from_toml_str(&off, false).unwrap();
    assert!(!off.graph.client_options().immutable_ids);
    assert_eq!(s.kafka.topics.events, "graph.events");
    assert_eq!(s.kafka.options.0["security.protocol"], "SASL_SSL");
    assert_eq!(s.graph.graph_base_url(), "https://graph.microsoft.com");
    assert_eq!(
        s.graph.token_url(),
        "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    );
    let p = s.partitions();
    assert_eq!(p.len(), 3);
    assert_eq!(
        p[0].to_json(),
        r#"{"kind":"calendar_view","user":"a@contoso.com","calendar":"primary","window":"2025-12-31T23:00:00Z/2027-01-01T00:00:00Z"}"#
    );
    let shown = format!("{s:?} {}", s.redacted_json());
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("hunter"),
        "{shown}"
    );
    assert_eq!(
        s.transactional_id(),
        "graph-cdc",
        "a prefix shared by the workers: shard n's producer is graph-cdc-shard-n"
    );
    assert_eq!(s.worker.shards, 8);
    assert_eq!(s.kafka.shards_topic, "graph-cdc-shards");
}

#[test]
fn every_error_names_its_key() {
    let base = OK.replace("page_size", "x");
    for (bad, key) in [
        (OK.replace("[graph]", "[graph]\npag_size = 3"), "graph.pag_size"),
        (OK.replace("[graph]", "[graph]\npage_size = \"many\""), "graph.page_size"),
        (OK.replace("[graph]", "[graph]\npage_size = 0"), "graph.page_size"),
        (OK.replace("[graph]", "[graph]\npoll_interval = \"soon\""), "graph.poll_interval"),
        (OK.replace("[graph]", "[graph]\ncloud = \"mars\""), "graph.cloud"),
        (OK.replace("[graph]", "[graph]\nbase_backoff = \"2m\""), "graph.base_backoff"),
        (OK.replace("[graph]", "[graph]\nmax_pages_per_round = 0"), "graph.max_pages_per_round"),
        (OK.replace("[graph]", "[graph]\nreconcile_interval = \"weekly\""), "graph.reconcile_interval"),
        (format!("{OK}\n[log]\nformat = \"xml\""), "log.format"),
        (OK.replace("end = \"2027-01-01T00:00:00Z\"", "end = \"2025-01-01T00:00:00Z\""), "sources[0].end"),
        (OK.replace("client_secret = \"s3cr3t-value\"", ""), "graph.client_secret"),
        (OK.replace("client_secret = \"s3cr3t-value\"", "client_secret = \"x\"\ncertificate_path = \"/nope\"\nprivate_key_path = \"/nope\""), "graph.client_secret"),
        (OK.replace("users = [\"a@contoso.com\"]", "users = []"), "sources[1].users"),
        (OK.replace("kind = \"todo\"", "kind = \"mail\""), "sources[1]"),
        (OK.replace("kind = \"todo\"", "kind = \"todo\"\nstart = \"x\""), "sources[1].start"),
        (OK.replace("[graph]", "[graph]\ncloud = \"china\""), "sources[1].kind"),
        (format!("{OK}\n[[sources]]\nkind = \"calendar_view\"\nusers = [\"b@contoso.com\"]\nstart = \"2026-06-01T00:00:00Z\"\nend = \"2026-07-01T00:00:00Z\""), "sources[2]"),
        (OK.replace("[kafka.options]", "[kafka]\nreplication_factor = 0\n[kafka.options]"), "kafka.replication_factor"),
        (format!("{OK}\n[worker]\nhealth_interval = \"0s\""), "worker.health_interval"),
    ] {
        let e = err(&bad);
        assert!(e.contains(key), "expected '{key}' in: {e}");
    }
    let _ = base;
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    assert_eq!(
        parse_duration("7d").unwrap(),
        Duration::from_secs(7 * 86_400)
    );
    assert!(parse_duration("3 days").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn closed_sets_name_the_key_and_what_is_accepted() {
    let e = err(&OK.replace("[graph]", "[graph]\ncloud = \"mars\""));
    assert!(
        e.contains("graph.cloud") && e.contains("`usgov-dod`") && e.contains("`china`"),
        "{e}"
    );
    let e = err(&format!("{OK}\n[log]\nformat = \"xml\""));
    assert!(
        e.contains("log.format") && e.contains("`text`") && e.contains("`json`"),
        "{e}"
    );
    let e = err(&format!("{OK}\n[errors]\ntolerance = \"some\""));
    assert!(e.contains("errors.tolerance") && e.contains("`all`"), "{e}");
    for (cloud, host, login) in [
        (
            "global",
            "https://graph.microsoft.com",
            "https://login.microsoftonline.com",
        ),
        (
            "usgov",
            "https://graph.microsoft.us",
            "https://login.microsoftonline.us",
        ),
        (
            "usgov-dod",
            "https://dod-graph.microsoft.us",
            "https://login.microsoftonline.us",
        ),
        (
            "china",
            "https://microsoftgraph.chinacloudapi.cn",
            "https://login.chinacloudapi.cn",
        ),
    ] {
        let toml = OK
            .replace("[graph]", &format!("[graph]\ncloud = \"{cloud}\""))
            .replace(
                "[[sources]]\n    kind = \"todo\"",
                "[[sources]]\n    kind = \"calendar_list\"",
            );
        let s = Settings::from_toml_str(&toml, false).unwrap();
        assert_eq!(s.graph.graph_base_url(), host);
        assert!(s.graph.token_url().starts_with(login));
        assert_eq!(
            s.redacted_json()["graph"]["cloud"],
            cloud,
            "written back the same"
        );
    }
    let s = Settings::from_toml_str(&format!("{OK}\n[log]\nformat = \"json\""), false).unwrap();
    assert_eq!(s.log.format, LogFormat::Json);
}

#[test]
fn defaults_are_settings_and_every_option_comes_from_them() {
    let d = Settings::defaults();
    assert_eq!(d.name, "graph-cdc");
    assert_eq!(d.graph.cloud, Cloud::Global);
    assert_eq!(d.log.format, LogFormat::Text);
    // The Graph client's own defaults (for its tests) say the same as the settings'.
    assert_eq!(
        format!("{:?}", d.graph.client_options()),
        format!("{:?}", crate::graph::ClientOptions::default()),
        "graph::ClientOptions::default() drifted from config::DEFAULTS"
    );
    let o = SinkOptions::new("k:9092", "conn", "conn-0");
    assert_eq!(
        (
            o.bootstrap_servers.as_str(),
            o.connector.as_str(),
            o.transactional_id.as_str()
        ),
        ("k:9092", "conn", "conn-0")
    );
    assert_eq!(o.topics.events, d.kafka.topics.events);
    assert_eq!(o.offsets_topic, "graph-cdc-offsets");
    assert_eq!(o.state_topic, "graph-cdc-state");
    assert_eq!(o.max_batch_records, 5000);
    assert_eq!(o.linger, Duration::from_millis(100));
    assert_eq!(o.errors.dead_letter_topic, None);
}

#[test]
fn sink_options_follow_the_settings() {
    let toml = format!(
        "{}\n[errors]\ntolerance = \"all\"\ndead_letter_topic = \"dlq\"\n[worker]\nlinger = \"7ms\"",
        OK.replace("[kafka.options]", "[kafka]\nworker_id = \"w3\"\n[kafka.topics]\nevents = \"ev\"\n[kafka.options]")
    );
    let s = Settings::from_toml_str(&toml, false).unwrap();
    let o = s.sink_options();
    assert_eq!(o.transactional_id, "graph-cdc", "the same for every worker");
    assert_eq!(s.worker_id(), "w3");
    assert_eq!(o.topics.events, "ev");
    assert_eq!(o.topics.tasks, "graph.todo.tasks");
    assert_eq!(o.errors.dead_letter_topic.as_deref(), Some("dlq"));
    assert_eq!(o.linger, Duration::from_millis(7));
    assert_eq!(o.kafka.all["security.protocol"], "SASL_SSL");
    assert_eq!(o.kafka.consumer["ssl.key.password"], "consumer-hunter3");
    let shown = format!("{o:?}");
    assert!(!shown.contains("hunter"), "{shown}");
    let s = Settings::from_toml_str(
        &toml.replace("tolerance = \"all\"", "tolerance = \"none\""),
        false,
    )
    .unwrap();
    assert_eq!(
        s.sink_options().errors.dead_letter_topic,
        None,
        "not tolerated: not used"
    );
}

#[test]
fn graph_hosts_need_https_outside_loopback_and_bodies_a_cap() {
    let with = |extra: &str| OK.replace("[graph]", &format!("[graph]\n{extra}"));
    for ok in [
        "base_url = \"https://graph.example\"\nauthority_url = \"https://login.example\"",
        "base_url = \"http://127.0.0.1:8080\"\nauthority_url = \"http://127.9.9.9\"",
        "base_url = \"http://[::1]:8080\"\nauthority_url = \"http://LOCALHOST:8080\"",
        "base_url = \"http://graph-sim:8080\"\nallow_insecure_http = true",
        "max_response_bytes = 1",
    ] {
        Settings::from_toml_str(&with(ok), false).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, key) in [
        ("base_url = \"http://graph-sim:8080\"", "graph.base_url"),
        ("authority_url = \"http://10.0.0.7\"", "graph.authority_url"),
        ("base_url = \"http://127.0.0.1.example\"", "graph.base_url"),
        ("base_url = \"ftp://127.0.0.1\"", "graph.base_url"),
        ("max_response_bytes = 0", "graph.max_response_bytes"),
    ] {
        let e = err(&with(bad));
        assert!(e.contains(key), "{bad}: {e}");
    }
    let e = err(&with("base_url = \"http://graph-sim:8080\""));
    assert!(
        e.contains("clear text") && e.contains("allow_insecure_http"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t-value"), "{e}");
    let s = Settings::from_toml_str(&with("max_response_bytes = 4096"), false).unwrap();
    assert_eq!(s.graph.client_options().max_response_bytes, 4096);
}

#[test]
fn the_token_file_is_read_once_as_the_settings_load() {
    let dir = std::env::temp_dir().join(format!("graph-cdc-files-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "t0k-from-file\n").unwrap();
    let toml = format!("{OK}\n[server]\nauth_token_file = \"{}\"", file.display());
    let s = Settings::from_toml_str(&toml, false).unwrap();
    std::fs::remove_file(&file).unwrap();
    // The start takes what validation read: the file is not read again.
    let files = s.server.files().unwrap();
    assert_eq!(
        files.token.as_ref().map(Secret::expose),
        Some("t0k-from-file")
    );
    assert!(files.tls.is_none());
    // Settings that were not loaded read it when asked, and name it when they cannot.
    let mut unloaded = s.clone();
    unloaded.server.files = None;
    let e = unloaded.server.files().unwrap_err().to_string();
    assert!(e.starts_with("server.auth_token_file: cannot read "), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn group_sources_replace_users_and_give_templates() {
    let groups = r#"
    [[sources]]
    kind = "calendar_list"
    group = "g-1"
    on_member_removed = "keep"
    [[sources]]
    kind = "calendar_view"
    group = "g-1"
    on_member_removed = "keep"
    start = "-1d"
    end = "+7d"
    window_roll = "1h"
    "#;
    let s = Settings::from_toml_str(&format!("{OK}{groups}"), false).unwrap();
    assert_eq!(s.graph.membership_interval.0, Duration::from_secs(3600));
    assert_eq!(s.kafka.topics.members, "graph.group.members");
    assert_eq!(s.partitions().len(), 3, "group sources list no users");
    let g = s.groups();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].group, "g-1");
    assert_eq!(g[0].templates.len(), 2);
    assert!(!g[0].tombstone, "as its sources say");
    assert!(g[0].templates.iter().all(|t| t.user().is_empty()));
    let view = &g[0].templates[1];
    assert_eq!(
        s.window_rolls().get(view),
        Some(&Duration::from_secs(3600)),
        "a group view's roll is found under its template"
    );
    let two = format!("{OK}{groups}[[sources]]\nkind = \"todo\"\ngroup = \"g-2\"\n");
    let two = Settings::from_toml_str(&two, false).expect("two groups, different kinds");
    assert_eq!(two.groups().len(), 2);
    let todo = format!("{OK}[[sources]]\nkind = \"todo\"\ngroup = \"g-2\"\n");
    let default = Settings::from_toml_str(&todo, false).unwrap();
    assert!(default.groups()[0].tombstone, "tombstone is the default");
    for (bad, key, says) in [
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\n"),
            "sources[2].users / sources[2].group",
            "give the users",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\ngroup = \"g\"\nusers = [\"a@b.c\"]\n"),
            "sources[2].users / sources[2].group",
            "not both",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\ngroup = \"g h\"\n"),
            "sources[2].group",
            "not a group object id",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\ngroup = \"g\"\n[[sources]]\nkind = \"calendar_list\"\ngroup = \"g\"\non_member_removed = \"keep\"\n"),
            "sources[3].on_member_removed",
            "\"keep\" differs from sources[2] of the same group (\"tombstone\")",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\nusers = [\"a@b.c\"]\non_member_removed = \"tombstone\"\n"),
            "sources[2].on_member_removed",
            "only for a source with a group",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\ngroup = \"g\"\n[[sources]]\nkind = \"todo\"\ngroup = \"g\"\n"),
            "sources[3]",
            "listed twice",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"todo\"\ngroup = \"g\"\n[[sources]]\nkind = \"todo\"\ngroup = \"h\"\n"),
            "sources[3].group",
            "tracks To Do through group 'g' already",
        ),
        (
            format!("{OK}[[sources]]\nkind = \"calendar_view\"\ngroup = \"g\"\nstart = \"-1d\"\nend = \"+1d\"\n[[sources]]\nkind = \"calendar_view\"\ngroup = \"h\"\nstart = \"+2d\"\nend = \"+3d\"\n"),
            "sources[3].group",
            "tracks calendar 'primary' through group 'g' already",
        ),
        (
            OK.replace("[graph]", "[graph]\nmembership_interval = \"0s\""),
            "graph.membership_interval",
            "at least 1s",
        ),
        (
            OK.replace("[kafka.options]", "[kafka.topics]\nmembers = \"bad topic\"\n[kafka.options]"),
            "kafka.topics.members",
            "Kafka allows only",
        ),
    ] {
        let e = err(&bad);
        assert!(e.contains(key) && e.contains(says), "expected '{key}' … '{says}' in: {e}");
    }
}

#[test]
fn notifications_name_their_keys_and_hide_the_client_state() {
    let off = Settings::from_toml_str(OK, false).unwrap();
    assert!(!off.notifications.enabled);
    assert!(crate::worker::WorkerSpec::from_settings(&off)
        .unwrap()
        .notifications
        .is_none());
    let e = err(&format!("{OK}\n[notifications]\nenabled = true\n"));
    assert!(e.contains("notifications.public_url: required"), "{e}");
    assert!(e.contains("notifications.client_state: required"), "{e}");
    let e = err(&format!(
        "{OK}\n[notifications]\nenabled = true\npublic_url = \"http://cdc.example.com/notifications\"\nclient_state = \"short\"\n"
    ));
    assert!(
        e.contains("notifications.public_url: Graph posts only to https"),
        "{e}"
    );
    assert!(e.contains("notifications.client_state: 16 to 128"), "{e}");
    assert!(!e.contains("short"), "{e}");
    let e = err(&format!(
        "{OK}\n[notifications]\ndelivery = \"carrier-pigeon\"\n"
    ));
    assert!(e.contains("notifications.delivery"), "{e}");
    let on = Settings::from_toml_str(
        &format!(
            "{OK}\n[notifications]\nenabled = true\npublic_url = \"https://cdc.example.com/notifications/\"\nclient_state = \"a-long-enough-client-state\"\n"
        ),
        false,
    )
    .unwrap();
    let shown = on.redacted_json().to_string();
    assert!(!shown.contains("a-long-enough-client-state"), "{shown}");
    let n = crate::worker::WorkerSpec::from_settings(&on)
        .unwrap()
        .notifications
        .unwrap();
    assert_eq!(n.url, "https://cdc.example.com/notifications");
    assert_eq!(
        n.lifecycle_url,
        "https://cdc.example.com/notifications/lifecycle"
    );
    assert_eq!(n.poll_interval, Duration::from_secs(15 * 60));
    assert!(!format!("{n:?}").contains("a-long-enough-client-state"));
}
