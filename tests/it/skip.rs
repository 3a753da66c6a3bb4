//! Honest skips. A test that needs an outside tool (node, npm, haproxy, openssl) asks
//! [`require_tools`] first: with every tool on PATH it runs; without one it fails under
//! `CI=true` (CI must run everything), and elsewhere it is reported as skipped, never as a silent
//! pass: one line on stderr and one line appended to the skip log, which `make test` clears
//! before `cargo test` and prints as a summary after it.
//!
//! A test that cannot sensibly run on one kind of Redis (`FANOUT_TEST_REDIS`, see
//! `harness::RedisKind`) — it is about one server's behaviour, or about a client that speaks to
//! one server — asks [`skip_on_redis`] first and is recorded as skipped on that kind the same
//! way, with the reason; that is a decision about the test, not a missing tool, so CI skips it
//! too.
//!
//! The skip log is `$FANOUT_SKIP_LOG`, or `target/test-skips.txt` in the repository.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where skips are recorded: one `<test>: <reason>` line each.
pub fn skip_log() -> PathBuf {
    match std::env::var_os("FANOUT_SKIP_LOG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-skips.txt"),
    }
}

/// Whether CI is running the tests (`CI=true`, set by every common CI service).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether an executable file named `tool` is in one of PATH's directories.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Records that `test` was skipped and why: stderr and the skip log.
pub fn record_skip(test: &str, reason: &str) {
    // Straight to the process's stderr (libtest captures `eprintln!` of passing tests), in one
    // write so that lines of concurrent tests do not mix.
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {reason}\n").as_bytes());
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let line = format!("{test}: {}\n", reason.replace('\n', " "));
    // One write of one short line to a file opened for appending: lines of concurrent tests do
    // not mix.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record the skip in {}: {e}", log.display());
    }
}

/// True when every one of `tools` is on PATH. Otherwise: under `CI=true` a panic naming the
/// missing tools (the test fails); elsewhere the skip is recorded ([`record_skip`]) and the
/// answer is false, and the test must return at once. `hint` says how to get the tools.
#[must_use]
pub fn require_tools(test: &str, tools: &[&str], hint: &str) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{} not found on PATH ({hint})", missing.join(", "));
    assert!(
        !in_ci(),
        "{test}: {reason}; with CI=true a missing tool fails the test instead of skipping it"
    );
    record_skip(test, &reason);
    false
}

/// True when the tests run against one of `kinds` of Redis (`FANOUT_TEST_REDIS`): the skip is
/// recorded ([`record_skip`], the reason prefixed with the kind) and the test must return at
/// once. `why` says why the test cannot run there.
#[must_use]
pub fn skip_on_redis(test: &str, kinds: &[crate::harness::RedisKind], why: &str) -> bool {
    let kind = crate::harness::RedisKind::from_env();
    if !kinds.contains(&kind) {
        return false;
    }
    record_skip(
        test,
        &format!("not run with FANOUT_TEST_REDIS={}: {why}", kind.name()),
    );
    true
}
