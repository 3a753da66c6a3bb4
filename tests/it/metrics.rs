//! Metrics and operations files: `/metrics` after a known workload (names, types, exact
//! counter deltas), the Grafana dashboard against a scrape (no empty panel), the metrics table
//! of docs/operations.md against src/metrics.rs, and the deploy files (compose, Prometheus,
//! Grafana provisioning, Dockerfile, HAProxy).
//!
//! Why the node runs as a separate process here: the `metrics` recorder is process-global, and
//! the other tests of this binary run nodes in this process at the same time, so an in-process
//! node's counters would move with their traffic too. A node process has a recorder of its own
//! that only this test's traffic touches, which makes exact deltas (50 messages → +50) sound.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fanout::metrics::{ALL, Kind};
use fanout_client::{Client, ClientError, ConnectOptions};
use serde_json::{Value, json};
use serde_norway::Value as Yaml;

use crate::harness::*;
use crate::skip::{record_skip, require_tools};

// ---- Prometheus text format ---------------------------------------------------------------

/// One scrape: `# TYPE` per family and every sample.
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line: name and type");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .expect("sample line: series and value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Scrape { types, samples }
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether a family (or, for a histogram, its `_bucket`/`_sum`/`_count` series) is exported.
    fn has_series(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} without a quoted value"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
    }
}

async fn scrape(admin: std::net::SocketAddr) -> Scrape {
    // No Authorization header: /metrics needs no API key (docs/protocol.md §8).
    let (status, body) = http_raw(admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .expect("/metrics reachable");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    Scrape::parse(&body)
}

// ---- a node process with a known workload ---------------------------------------------------

async fn api(admin: std::net::SocketAddr, method: &str, path: &str, body: Value) -> u16 {
    let auth = format!("Bearer {API_KEY}");
    let body = body.to_string();
    http(admin, method, path, Some(&body), Some(&auth))
        .await
        .expect("api reachable")
        .0
}

fn send(chat: &str, i: usize) -> Value {
    json!({ "chatId": chat, "content": format!("message {i}"), "clientMsgId": format!("m-{i}") })
}

/// The counter deltas of a known workload, exactly: this node process serves nothing else.
#[tokio::test]
async fn scrape_after_a_known_workload() {
    let redis = Redis::start().await;
    let node = NodeProcess::spawn(&redis, "metrics-1", NodeOpts::default()).await;
    let chat = "metrics-chat";
    let created = api(
        node.admin,
        "POST",
        "/api/v1/chats",
        json!({ "chatId": chat, "members": ["alice", "bob"] }),
    )
    .await;
    assert_eq!(created, 201);
    let alice = connect(&node.url(), "alice").await;
    let mut bob = connect(&node.url(), "bob").await;
    // Let the connect handlers (presence registration) settle before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scrape(node.admin).await;

    for i in 0..50 {
        let a = ack(&alice, "chat:send", send(chat, i)).await;
        assert_eq!(a["status"], "ACCEPTED", "{a}");
    }
    // A retry of an accepted clientMsgId: acknowledged again, not accepted again.
    let dup = ack(&alice, "chat:send", send(chat, 0)).await;
    assert_eq!(dup["offset"], 1, "{dup}");
    // Bad input: three invalid payloads and one unknown event.
    for _ in 0..3 {
        let a = ack(&alice, "chat:send", json!({ "chatId": chat, "content": 5 })).await;
        assert_eq!(a["error"]["code"], "INVALID_PAYLOAD", "{a}");
    }
    let a = ack(&alice, "no-such-event", json!({})).await;
    assert_eq!(a["error"]["code"], "INVALID_EVENT", "{a}");
    // One refused handshake: a token signed with another secret.
    let forged = fanout::auth::mint_hs256(
        "not-the-secret",
        "mallory",
        fanout::auth::now_secs() + 60,
        None,
    )
    .expect("mint");
    let refused = Client::connect(
        &node.url(),
        ConnectOptions {
            auth: Some(json!({ "token": forged })),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(refused, Err(ClientError::Refused(_))),
        "forged token must be refused"
    );
    let got = bob
        .collect("chat:message", Duration::from_millis(1500))
        .await;
    assert_eq!(got.len(), 50, "bob receives every message once");

    // The emit counter moves right after the emit that bob saw: allow it a moment.
    let emits = [("event", "chat:message")];
    let counted = |after: &Scrape| {
        after.value("fanout_local_emits_total", &emits)
            - before.value("fanout_local_emits_total", &emits)
            >= 50.0
    };
    let every = Duration::from_millis(100);
    let after = eventually(WAIT, every, || scrape(node.admin), counted).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };

    // Every metric of src/metrics.rs is exported with its declared type.
    for m in ALL {
        assert_eq!(
            after.types.get(m.name).map(String::as_str),
            Some(m.kind.as_str()),
            "# TYPE of {}",
            m.name
        );
    }

    assert_eq!(delta("fanout_messages_accepted_total", &[]), 50.0);
    assert_eq!(delta("fanout_messages_deduplicated_total", &[]), 1.0);
    assert_eq!(
        delta("fanout_events_received_total", &[("event", "chat:send")]),
        54.0
    );
    assert_eq!(
        delta("fanout_events_received_total", &[("event", "other")]),
        1.0
    );
    let ok = [("event", "chat:send"), ("status", "ok"), ("code", "none")];
    assert_eq!(
        delta("fanout_acks_total", &ok),
        51.0,
        "50 accepted + 1 duplicate"
    );
    let invalid = [
        ("event", "chat:send"),
        ("status", "error"),
        ("code", "INVALID_PAYLOAD"),
    ];
    assert_eq!(delta("fanout_acks_total", &invalid), 3.0);
    let unknown = [("event", "other"), ("code", "INVALID_EVENT")];
    assert_eq!(delta("fanout_acks_total", &unknown), 1.0);
    // CHAT_SEND_PATH=script, the default: every send is one script call.
    assert_eq!(
        delta(
            "fanout_redis_script_calls_total",
            &[("script", "chat_send")]
        ),
        51.0
    );
    for (path, reason, n) in [
        ("script", "configured", 51.0),
        ("transaction", "committed", 0.0),
    ] {
        assert_eq!(
            delta(
                "fanout_chat_send_path_total",
                &[("path", path), ("reason", reason)]
            ),
            n,
            "{path} {reason}"
        );
    }
    for (op, n) in [
        ("chat_send", 51.0),
        ("chat_send_tx_read", 0.0),
        ("chat_send_tx_exec", 0.0),
    ] {
        assert_eq!(
            delta("fanout_redis_command_duration_seconds_count", &[("op", op)]),
            n,
            "{op}"
        );
    }
    // One room broadcast per message on this, the only, node: bob and alice both get it.
    assert_eq!(
        delta("fanout_local_emits_total", &[("event", "chat:message")]),
        50.0
    );
    assert!(delta("fanout_backplane_entries_read_total", &[]) >= 50.0);
    assert!(delta("fanout_delivery_latency_seconds_count", &[]) >= 50.0);
    let le_10s = after.value("fanout_delivery_latency_seconds_bucket", &[("le", "10")]);
    assert!(
        le_10s >= 50.0,
        "every local delivery took under 10 s ({le_10s})"
    );
    assert_eq!(
        delta(
            "fanout_connect_refusals_total",
            &[("reason", "bad_signature")]
        ),
        1.0
    );
    assert_eq!(
        after.value("fanout_connections", &[("transport", "websocket")]),
        2.0
    );
    assert_eq!(
        after.value("fanout_connects_total", &[("transport", "websocket")]),
        2.0
    );
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(after.value("fanout_build_info", &version), 1.0);
    assert!(after.value("fanout_presence_transitions_total", &[("kind", "online")]) >= 2.0);
    // The only node follows the chat, alice's and bob's user rooms (and its own canary channel,
    // which is not a room).
    assert!(
        after.value("fanout_subscriptions", &[]) >= 3.0,
        "rooms subscribed"
    );
    assert!(
        after.value(
            "fanout_subscription_changes_total",
            &[("change", "subscribe")]
        ) >= 3.0
    );

    // No label carries an id: user, chat and socket ids never appear in a series.
    let sid = alice.sid().to_owned();
    for (name, labels, _) in &after.samples {
        for v in labels.values() {
            assert!(
                !["alice", "bob", "mallory", chat, sid.as_str()].contains(&v.as_str()),
                "{name} has an id as a label value: {v}"
            );
        }
    }
    alice.close().await;
    bob.close().await;
}

// ---- the dashboard --------------------------------------------------------------------------

fn dashboard() -> Value {
    let path = repo_root().join("grafana/dashboards/fanout.json");
    let text = std::fs::read_to_string(&path).expect("grafana/dashboards/fanout.json");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every PromQL expression of the dashboard (panels nested in rows included).
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(d["panels"].as_array().expect("panels"), &mut out);
    out
}

/// The `fanout_*` series names in a PromQL expression.
fn series_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("fanout_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Every series a dashboard query reads is in a real scrape (after a little traffic), with the
/// type its suffix implies: no panel is empty because of a misspelt or missing metric.
#[tokio::test]
async fn dashboard_queries_only_read_exported_metrics() {
    let d = dashboard();
    let queries = dashboard_queries(&d);
    assert!(
        queries.len() >= 20,
        "the dashboard has its panels ({})",
        queries.len()
    );

    let redis = Redis::start().await;
    let node = NodeProcess::spawn(&redis, "metrics-2", NodeOpts::default()).await;
    assert_eq!(
        api(
            node.admin,
            "POST",
            "/api/v1/chats",
            json!({ "chatId": "dash", "members": ["u1", "u2"] })
        )
        .await,
        201
    );
    let u1 = connect(&node.url(), "u1").await;
    let u2 = connect(&node.url(), "u2").await;
    ack(&u1, "chat:send", send("dash", 1)).await;
    ack(&u1, "unknown-event", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = scrape(node.admin).await;

    let declared: BTreeMap<&str, Kind> = ALL.iter().map(|m| (m.name, m.kind)).collect();
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = series_names(expr);
        assert!(
            !names.is_empty(),
            "panel {title:?} reads no fanout metric: {expr}"
        );
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (declared.get(base) == Some(&Kind::Histogram)).then_some(base)
                })
                .unwrap_or(&name)
                .to_owned();
            let kind = declared.get(family.as_str()).unwrap_or_else(|| {
                panic!("panel {title:?} reads {name}, which src/metrics.rs does not declare")
            });
            if *kind == Kind::Histogram {
                assert_ne!(
                    name, family,
                    "panel {title:?} reads histogram {family} without _bucket/_sum/_count"
                );
            }
            assert!(
                s.has_series(&name),
                "panel {title:?} reads {name}, which /metrics does not export"
            );
            used.insert(family);
        }
    }
    // Every declared metric is on the dashboard somewhere.
    let unused: Vec<&str> = declared
        .keys()
        .filter(|n| !used.contains(**n))
        .copied()
        .collect();
    assert!(
        unused.is_empty(),
        "metrics on no dashboard panel: {unused:?}"
    );

    // Every panel and target reads the provisioned datasource.
    let uid = datasource_uid();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], uid.as_str(), "panel {}", p["title"]);
    }
    u1.close().await;
    u2.close().await;
}

// ---- docs/operations.md ---------------------------------------------------------------------

/// The metrics table of docs/operations.md is generated from src/metrics.rs; this fails when
/// they drift. To update: paste `fanout::metrics::markdown_table()` (printed below on failure)
/// between the markers.
#[test]
fn operations_doc_lists_every_metric() {
    // The table appears in docs/operations.md and in the README's "Operate" section.
    for rel in ["docs/operations.md", "README.md"] {
        let doc = std::fs::read_to_string(repo_root().join(rel)).expect(rel);
        let begin = "<!-- metrics:begin -->\n";
        let end = "<!-- metrics:end -->";
        let start = doc.find(begin).expect("metrics:begin marker") + begin.len();
        let stop = doc[start..].find(end).expect("metrics:end marker") + start;
        let table = fanout::metrics::markdown_table();
        assert!(
            doc[start..stop] == table,
            "{rel}'s metrics table differs from src/metrics.rs; it should read:\n{table}"
        );
    }
}

// ---- deploy files ---------------------------------------------------------------------------

fn yaml(rel: &str) -> Yaml {
    let text =
        std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut v: Yaml =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    // Resolve `<<: *anchor` merge keys as compose does.
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    v
}

fn str_of(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn list(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(str_of).collect())
        .unwrap_or_default()
}

fn datasource_uid() -> String {
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    str_of(&ds["datasources"][0]["uid"])
}

/// The host side of each `./path:/container/path[:ro]` volume of a service.
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    list(&service["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap().to_owned(),
                parts.next().expect("container path").to_owned(),
            )
        })
        .collect()
}

#[test]
fn compose_stack_references_files_that_exist() {
    let root = repo_root();
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for s in ["redis", "node", "lb", "prometheus", "grafana", "loadtest"] {
        assert!(names.contains(s), "service {s} in docker-compose.yml");
    }
    let svc = |n: &str| &compose["services"][n];

    // Every bind-mounted file or directory exists.
    for name in &names {
        for (host, _) in bind_mounts(svc(name)) {
            assert!(
                root.join(&host).exists(),
                "service {name} mounts {host}, which does not exist"
            );
        }
    }
    // The node is built from this repo and can be scaled: no fixed host port, no fixed name.
    for name in ["node", "loadtest"] {
        let build = &svc(name)["build"];
        assert_eq!(str_of(&build["context"]), ".", "{name} build context");
        let dockerfile = str_of(&build["dockerfile"]);
        assert!(
            root.join(&dockerfile).is_file(),
            "{name} dockerfile {dockerfile}"
        );
    }
    assert!(
        svc("node")["ports"].is_null(),
        "node publishes no host port (--scale)"
    );
    assert!(
        svc("node")["container_name"].is_null(),
        "node has no fixed name (--scale)"
    );
    let expose = list(&svc("node")["expose"]);
    assert!(
        expose.contains(&"3000".into()) && expose.contains(&"9100".into()),
        "{expose:?}"
    );
    // The LB resolves the node service by name (Docker mode of deploy/haproxy.cfg).
    assert_eq!(str_of(&svc("lb")["environment"]["FANOUT_DNS_NAME"]), "node");
    // The load test only runs with its profile, against the LB.
    assert_eq!(list(&svc("loadtest")["profiles"]), ["loadtest"]);
    let cmd = list(&svc("loadtest")["command"]);
    assert_eq!(
        cmd.first().map(String::as_str),
        Some("fanout-bench"),
        "{cmd:?}"
    );
    let url = cmd
        .iter()
        .position(|a| a == "--url")
        .map(|i| cmd[i + 1].as_str());
    assert_eq!(url, Some("http://lb:8080"), "{cmd:?}");
    assert!(root.join("crates/fanout-bench/src/main.rs").is_file());

    // The Dockerfile copies only what exists, and ships the binaries compose runs.
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                root.join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
        }
    }
    for bin in ["fanout", "fanout-bench"] {
        assert!(
            dockerfile.contains(&format!("target/release/{bin} ")),
            "image ships {bin}"
        );
    }

    // Prometheus scrapes every node replica through DNS on the internal port.
    let prom_mount = bind_mounts(svc("prometheus"));
    assert!(
        prom_mount
            .iter()
            .any(|(h, _)| h == "./deploy/prometheus.yml"),
        "{prom_mount:?}"
    );
    let prom = yaml("deploy/prometheus.yml");
    let jobs = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let fanout_job = jobs
        .iter()
        .find(|j| str_of(&j["job_name"]) == "fanout")
        .expect("fanout job");
    let sd = &fanout_job["dns_sd_configs"][0];
    assert_eq!(list(&sd["names"]), ["node"]);
    assert_eq!(str_of(&sd["port"]), "9100");
    assert_eq!(str_of(&fanout_job["metrics_path"]), "/metrics");

    // Grafana: provisioning and dashboards are mounted where the provisioning files say.
    let mounts = bind_mounts(svc("grafana"));
    let container_of = |host: &str| {
        mounts
            .iter()
            .find(|(h, _)| h.trim_end_matches('/') == host)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("grafana mounts {host}: {mounts:?}"))
    };
    assert_eq!(
        container_of("./grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let providers = yaml("grafana/provisioning/dashboards/fanout.yml");
    let path = str_of(&providers["providers"][0]["options"]["path"]);
    assert_eq!(container_of("./grafana/dashboards"), path);
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let url = str_of(&ds["datasources"][0]["url"]);
    assert_eq!(
        url, "http://prometheus:9090",
        "datasource points at the prometheus service"
    );
    assert_eq!(
        dashboard()["panels"][1]["datasource"]["uid"],
        datasource_uid().as_str()
    );

    // Where the compose plugin exists, let it validate the whole file too.
    let has_compose = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_compose {
        let out = Command::new("docker")
            .args([
                "compose",
                "-f",
                "docker-compose.yml",
                "--profile",
                "loadtest",
                "config",
                "-q",
            ])
            .current_dir(&root)
            .output()
            .expect("docker compose config");
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        // Docker is not part of the test toolchain (make test does not install it, CI images
        // lack it), so this one check is recorded as skipped but never fails the test.
        record_skip(
            "metrics::compose_stack_references_files_that_exist (its `docker compose config -q` check)",
            "no docker compose plugin here",
        );
    }
}

#[test]
fn haproxy_config_is_valid_locally_and_in_docker_mode() {
    if !require_tools(
        "metrics::haproxy_config_is_valid_locally_and_in_docker_mode",
        &["haproxy"],
        HAPROXY_HINT,
    ) {
        return;
    }
    let cfg = repo_root().join("deploy/haproxy.cfg");
    for dns in [None, Some("node")] {
        let mut cmd = Command::new("haproxy");
        cmd.arg("-c").arg("-f").arg(&cfg);
        match dns {
            Some(name) => cmd.env("FANOUT_DNS_NAME", name),
            None => cmd.env_remove("FANOUT_DNS_NAME"),
        };
        let out = cmd.output().expect("haproxy -c");
        assert!(
            out.status.success(),
            "haproxy -c (FANOUT_DNS_NAME={dns:?}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(Path::new(&cfg).is_file());
}

/// The files of the repository: `git ls-files` when this is a git checkout, otherwise every file
/// under the root but `target/`, `.git/` and `node_modules/`.
fn repo_files() -> Vec<std::path::PathBuf> {
    let root = repo_root();
    if let Ok(out) = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        && out.status.success()
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect();
    }
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if !matches!(name.to_str(), Some("target" | ".git" | "node_modules")) {
                    dirs.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The contract lives in the repository (docs/protocol.md, Part I); nothing may point at a copy
/// outside it, which someone who clones the repository does not have.
#[test]
fn nothing_refers_to_a_contract_outside_the_repository() {
    // Built from pieces so that this file does not match itself (nor a grep for them).
    let dir = ["sha", "red/"].concat();
    let needles = [format!("../{dir}"), format!("{dir}{}.md", "PROTOCOL")];
    let mut hits = Vec::new();
    for path in repo_files() {
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // listed by git but deleted in the work tree
        };
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle.as_str())) {
                hits.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "refer to docs/protocol.md instead:\n{}",
        hits.join("\n")
    );
    let protocol = std::fs::read_to_string(repo_root().join("docs/protocol.md")).unwrap();
    assert!(protocol.contains("# Part I — the contract"));
    for n in 1..=8 {
        assert!(
            protocol.contains(&format!("\n## §{n}. ")),
            "docs/protocol.md has no contract section §{n}"
        );
    }
}

/// The alert rules file is valid YAML, every rule's expression names only metrics of the table
/// (or Prometheus's own `up`), and both Prometheus setups load it: the compose stack mounts it
/// where deploy/prometheus.yml's `rule_files` looks, and deploy/up.sh names it.
#[test]
fn alert_rules_name_real_metrics_and_both_setups_load_them() {
    let rules = yaml("deploy/prometheus-rules.yml");
    let names: Vec<&str> = fanout::metrics::ALL.iter().map(|m| m.name).collect();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            alerts.push(str_of(&rule["alert"]));
            let expr = str_of(&rule["expr"]);
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("fanout_") {
                    let base = word
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_sum")
                        .trim_end_matches("_count");
                    assert!(names.contains(&base), "{expr}: {word} is no metric");
                }
            }
        }
    }
    assert!(alerts.contains(&"FanoutNodeNotDelivering".to_owned()));
    let prom = yaml("deploy/prometheus.yml");
    let files = list(&prom["rule_files"]);
    let compose = yaml("docker-compose.yml");
    let mounts = bind_mounts(&compose["services"]["prometheus"]);
    for f in &files {
        assert!(
            mounts
                .iter()
                .any(|(host, inside)| host == "./deploy/prometheus-rules.yml" && inside == f),
            "compose mounts deploy/prometheus-rules.yml at {f}: {mounts:?}"
        );
    }
    assert!(!files.is_empty(), "deploy/prometheus.yml has rule_files");
    let up = std::fs::read_to_string(repo_root().join("deploy/up.sh")).unwrap();
    assert!(up.contains("rule_files:\n  - \"$ROOT/deploy/prometheus-rules.yml\""));
}
