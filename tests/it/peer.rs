//! The side-by-side benchmark (`bench/compare.sh`, docs/benchmarks.md) runs end to end: its
//! `smoke` preset starts a private Redis, two fanout nodes of this build, then two nodes of the
//! Node.js socket.io peer (`bench/peer/server.js`, official Redis streams adapter), drives both
//! with `fanout-bench --join` and writes the JSON the report is made of. Both systems must have
//! delivered every accepted message exactly once, in order, to every room member.
//!
//! Skipped (with a message) only when `node` or `npm` is not on PATH, as the JS interop test.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::repo_root;
use crate::skip::require_tools;

/// Longest the smoke run may take (normally ~25 s, plus `npm ci` the first time).
const LIMIT: Duration = Duration::from_secs(150);

/// The script in its own process group: on every exit path the whole group (script, nodes,
/// redis, generator) gets SIGTERM, so the script's trap runs, then SIGKILL.
struct Group(Option<Child>);

impl Group {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let pgid = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[test]
fn compare_smoke_runs_both_systems_without_loss() {
    if !require_tools(
        "peer::compare_smoke_runs_both_systems_without_loss",
        &["node", "npm"],
        "install Node.js 18+ with npm",
    ) {
        return;
    }
    let root = repo_root();
    let results = tempfile::tempdir().expect("tempdir");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fanout"))
        .parent()
        .expect("binary dir")
        .to_owned();
    assert!(
        bin_dir.join("fanout-bench").exists(),
        "fanout-bench is not beside {}",
        env!("CARGO_BIN_EXE_fanout")
    );
    let child = Command::new("bash")
        .arg(root.join("bench").join("compare.sh"))
        .args(["smoke", "--results"])
        .arg(results.path())
        .env("FANOUT_BIN_DIR", &bin_dir)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(results.path().join("compare.stdout")).expect("file"))
        .stderr(std::fs::File::create(results.path().join("compare.stderr")).expect("file"))
        .process_group(0)
        .spawn()
        .expect("spawn bench/compare.sh");
    let mut group = Group(Some(child));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        let c = group.0.as_mut().expect("running");
        if let Some(s) = c.try_wait().expect("try_wait") {
            group.0 = None;
            break s;
        }
        if Instant::now() > deadline {
            group.kill();
            panic!(
                "compare.sh smoke ran longer than {LIMIT:?}; stderr:\n{}",
                read(results.path(), "compare.stderr")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = read(results.path(), "compare.stdout");
    println!("{report}");
    assert!(
        status.success(),
        "compare.sh smoke failed ({status}); stderr:\n{}",
        read(results.path(), "compare.stderr")
    );
    assert!(
        report.contains("| fanout ÷ peer |"),
        "the report has no ratio row:\n{report}"
    );

    let out = Command::new("node")
        .arg(root.join("bench").join("report.mjs"))
        .arg("summary")
        .arg(results.path())
        .output()
        .expect("node bench/report.mjs summary");
    assert!(out.status.success(), "report.mjs summary failed: {out:?}");
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("summary line is JSON"))
        .collect();
    let systems: Vec<&str> = rows.iter().filter_map(|r| r["system"].as_str()).collect();
    assert_eq!(systems, ["fanout", "peer"], "one step per system: {rows:?}");
    for r in &rows {
        // smoke: 10 senders at 100 msg/s in total for 3 s, rooms of 10 => ~300 measured sends
        // (a send belongs to the window by its stamp, so a starved generator may shift one or
        // two across its edges) and 10 deliveries of each ACCEPTED one.
        let expected = r["expected"].as_u64().expect("expected deliveries");
        assert!(
            (2850..=3150).contains(&expected) && expected % 10 == 0,
            "expected deliveries {expected}: {r}"
        );
        assert_eq!(r["actual"], r["expected"], "{r}");
        for k in [
            "lost",
            "dup",
            "reordered",
            "nacked",
            "ackTimeouts",
            "skipped",
        ] {
            assert_eq!(r[k], 0, "{k} in {r}");
        }
        // Latency is not asserted: on a loaded machine a debug build may exceed any bound. The
        // judged latency is the one at the client's socket, which leaves out the generator's
        // own wait and so is at most the read latency.
        let (at_socket, at_read) = (r["dp99"].as_f64(), r["rp99"].as_f64());
        assert!(
            matches!((at_socket, at_read), (Some(s), Some(rd)) if s <= rd),
            "delivery p99 at socket {at_socket:?} vs at read {at_read:?}: {r}"
        );
    }
}
