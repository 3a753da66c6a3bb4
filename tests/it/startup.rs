//! Start-up of the real binary: a missing or bad setting stops it with one line naming it.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fanout"));
    cmd.args(args);
    for var in [
        "API_KEY",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY_FILE",
        "PORT",
        "REDIS_URL",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run fanout");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Flags, environment, and what the error line must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn missing_and_bad_settings_stop_start_up_with_one_line() {
    let cases: [Case; 5] = [
        (&[], &[("JWT_SECRET", "s")], "--api-key"),
        (&[], &[("API_KEY", "k")], "JWT_SECRET"),
        (
            &[],
            &[("API_KEY", "k"), ("JWT_SECRET", "s"), ("PORT", "http")],
            "--port",
        ),
        (
            &["--presence-ttl-secs", "0"],
            &[("API_KEY", "k"), ("JWT_SECRET", "s")],
            "PRESENCE_TTL_SECS",
        ),
        (
            &[],
            &[
                ("API_KEY", "k"),
                ("JWT_SECRET", "s"),
                ("REDIS_URL", "nope://x"),
            ],
            "REDIS_URL",
        ),
    ];
    for (args, env, names) in cases {
        let (code, stderr) = run(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.contains(names), "{stderr:?} should name {names}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_node_id_on_every_line() {
    use std::io::{BufRead, BufReader};
    let redis = crate::harness::Redis::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("NODE_ID", "log-node")
        .env("API_KEY", "k")
        .env("JWT_SECRET", "s")
        .env("REDIS_URL", redis.url())
        .env("BIND_ADDR", "127.0.0.1")
        .env("PORT", "0")
        .env("ADMIN_PORT", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let started = line.contains("fanout node started");
            lines.push(line);
            if started {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(std::time::Duration::from_secs(10), lines)
        .await
        .expect("a start-up line within 10 s")
        .unwrap();
    child.kill().ok();
    child.wait().ok();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["node"], "log-node", "{line}");
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}
