//! Python virtual environments for the tests that run a Python tool (the python-socketio
//! interop test, the Kubernetes manifest validation): one venv per requirements file under
//! `target/tmp/`, created with `python3 -m venv` and filled with `pip install -r`, serialized
//! across test processes by a file lock, and reused while the requirements file is unchanged
//! (a stamp file holds the requirements the venv was installed from).
//!
//! Needs `python3` 3.11+ with its `venv` module (Debian: python3-venv) and the PyPI registry (or a pip
//! cache/`find-links` holding the pinned packages). Without python3 or venv the caller's test
//! fails under `CI=true` and is reported as skipped elsewhere ([`require_python`]); a failing
//! `pip install` is a test failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use crate::skip::{in_ci, record_skip, require_tools};

/// How to get Python, for the skip line.
pub const PYTHON_HINT: &str = "install Python 3.11+ with its venv module (Debian 12: apt-get install python3 python3-venv; make test does)";

/// Whether the test can run Python tools: `python3` on PATH, 3.11 or newer (what the pinned
/// packages need), with the `venv` and `ensurepip` modules. Otherwise: under `CI=true` a panic (the test fails); elsewhere the skip is recorded
/// and the answer is false, and the test must return at once.
#[must_use]
pub fn require_python(test: &str) -> bool {
    if !require_tools(test, &["python3"], PYTHON_HINT) {
        return false;
    }
    let check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))";
    let usable = Command::new("python3")
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if usable {
        return true;
    }
    let reason =
        format!("python3 is older than 3.11 or has no venv/ensurepip module ({PYTHON_HINT})");
    assert!(
        !in_ci(),
        "{test}: {reason}; with CI=true a missing tool fails the test instead of skipping it"
    );
    record_skip(test, &reason);
    false
}

pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed\n{}", describe(&out)))
    }
}

/// The venv's directory for `name`: `target/tmp/py-venv-<name>`.
fn venv_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-venv-{name}"))
}

/// Creates (or reuses) the venv `name` with the packages of `requirements` and returns the
/// path of its `bin/` directory. Blocking; serialized across processes by a file lock.
fn create(name: &str, requirements: &Path) -> Result<PathBuf, String> {
    let wanted = std::fs::read_to_string(requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let dir = venv_dir(name);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let lock_path = tmp.join(format!("py-venv-{name}.lock"));
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;

    let bin = dir.join("bin");
    let stamp = dir.join("fanout-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && bin.join("python").exists() {
        return Ok(bin);
    }
    // Stale or half-made: start over, so that no package of an older pin list stays behind.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        &format!("python3 -m venv {}", dir.display()),
    )?;
    run(
        Command::new(bin.join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(requirements),
        &format!("pip install -r {}", requirements.display()),
    )?;
    std::fs::write(&stamp, &wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(bin)
}

/// The `bin/` directory of the venv `name` holding the packages of `requirements` (a path in
/// the repository), created once per test process (later calls reuse the first answer).
/// Panics with pip's output when the install fails.
pub async fn venv(name: &'static str, requirements: PathBuf) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<&'static str, Result<PathBuf, String>>>> = OnceLock::new();
    let result = tokio::task::spawn_blocking(move || {
        let made = MADE.get_or_init(Default::default);
        // Held across the install: a second test asking for the same venv waits for the first.
        let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
        made.entry(name)
            .or_insert_with(|| create(name, &requirements))
            .clone()
    })
    .await
    .expect("venv task");
    result.unwrap_or_else(|e| panic!("{e}"))
}
