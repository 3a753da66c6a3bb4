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
