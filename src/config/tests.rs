//! Settings parsing and validation: each bad value is one line naming its setting.
use super::*;

fn base() -> Vec<&'static str> {
    vec!["fanout", "--api-key", "k", "--jwt-secret", "s"]
}

#[test]
fn defaults_follow_the_protocol() {
    let c = Config::try_from_args(base()).expect("valid");
    assert_eq!(c.port, 3000);
    assert_eq!(c.admin_port, 9100);
    assert_eq!(c.presence_ttl_secs, 60);
    assert_eq!(c.max_message_bytes, 16384);
    assert_eq!(c.history_maxlen, 1000);
    assert_eq!(c.history_ttl_secs, 86400);
    assert_eq!(c.shutdown_grace_secs, 10);
    assert_eq!(c.redis_url(), "redis://127.0.0.1:6379/0");
}

#[test]
fn the_canary_timeout_must_exceed_its_interval() {
    let c = Config::try_from_args(base()).expect("valid");
    assert_eq!((c.canary_interval_ms, c.canary_timeout_secs), (2000, 10));
    for (interval, timeout) in [("50", "10"), ("2000", "2"), ("2000", "0")] {
        let mut args = base();
        args.extend([
            "--canary-interval-ms",
            interval,
            "--canary-timeout-secs",
            timeout,
        ]);
        let e = Config::try_from_args(args).unwrap_err();
        assert!(e.contains("CANARY_INTERVAL_MS"), "{e}");
    }
}

#[test]
fn missing_api_key_is_one_line_naming_it() {
    let e = Config::try_from_args(["fanout", "--jwt-secret", "s"]).unwrap_err();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("--api-key"), "{e}");
}

#[test]
fn bad_value_names_the_flag() {
    let mut args = base();
    args.extend(["--port", "notaport"]);
    let e = Config::try_from_args(args).unwrap_err();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("--port"), "{e}");
}

#[test]
fn jwt_settings_must_be_consistent() {
    let e = Config::try_from_args(["fanout", "--api-key", "k"]).unwrap_err();
    assert!(e.contains("JWT_SECRET"), "{e}");
    let mut args = base();
    args.extend(["--jwt-algorithm", "RS256"]);
    let e = Config::try_from_args(args).unwrap_err();
    assert!(e.contains("JWT_ALGORITHM"), "{e}");
}

#[test]
fn a_key_set_takes_asymmetric_algorithms_and_a_real_url() {
    let jwks = |extra: &[&'static str]| {
        let mut args = vec!["fanout", "--api-key", "k"];
        args.extend(extra);
        Config::try_from_args(args)
    };
    let c = jwks(&["--jwt-jwks-url", "https://idp.example/jwks.json"]).unwrap();
    assert!(matches!(
        c.jwt_key(),
        Ok(JwtKey::Jwks(_, ref a)) if a == &[JwtAlgorithm::RS256]
    ));
    let c = jwks(&[
        "--jwt-jwks-url",
        "http://127.0.0.1:8080/k",
        "--jwt-algorithm",
        "RS256,ES256",
    ])
    .unwrap();
    assert!(matches!(c.jwt_key(), Ok(JwtKey::Jwks(_, ref a)) if a.len() == 2));
    for (extra, names) in [
        (
            vec![
                "--jwt-jwks-url",
                "http://x/k",
                "--jwt-algorithm",
                "RS256,HS256",
            ],
            "JWT_ALGORITHM",
        ),
        (vec!["--jwt-jwks-url", "ftp://x/k"], "JWT_JWKS_URL"),
        (vec!["--jwt-jwks-url", "not a url"], "JWT_JWKS_URL"),
        (
            vec!["--jwt-jwks-url", "http://x/k", "--jwt-secret", "s"],
            "JWT_JWKS_URL",
        ),
        (
            vec!["--jwt-secret", "s", "--jwt-algorithm", "HS256,RS256"],
            "JWT_ALGORITHM",
        ),
        (
            vec![
                "--jwt-jwks-url",
                "http://x/k",
                "--jwt-jwks-refresh-secs",
                "0",
            ],
            "JWT_JWKS_REFRESH_SECS",
        ),
        (
            vec!["--jwt-algorithm", "none", "--jwt-jwks-url", "http://x/k"],
            "none",
        ),
    ] {
        let e = jwks(&extra).unwrap_err();
        assert!(e.contains(names), "{extra:?}: {e}");
    }
}

#[test]
fn services_parse_with_default_streams() {
    let mut args = base();
    args.extend(["--services", "stickyNotes=events:stickyNotes, whiteboard"]);
    let c = Config::try_from_args(args).expect("valid");
    assert_eq!(
        c.service_streams().unwrap(),
        [
            ("stickyNotes".to_owned(), "events:stickyNotes".to_owned()),
            ("whiteboard".to_owned(), "events:whiteboard".to_owned())
        ]
    );
    let mut args = base();
    args.extend(["--services", "bad name=x"]);
    assert!(
        Config::try_from_args(args)
            .unwrap_err()
            .contains("SERVICES")
    );
}

#[test]
fn tcp_user_timeout_defaults_to_one_ping_round_and_0_turns_it_off() {
    let c = Config::try_from_args(base()).expect("valid");
    assert_eq!(c.tcp_user_timeout(), Some(Duration::from_millis(45_000)));
    let mut args = base();
    args.extend(["--ping-interval-ms", "1000", "--ping-timeout-ms", "500"]);
    let c = Config::try_from_args(args).expect("valid");
    assert_eq!(c.tcp_user_timeout(), Some(Duration::from_millis(1500)));
    let mut args = base();
    args.extend(["--tcp-user-timeout-ms", "3000"]);
    let c = Config::try_from_args(args).expect("valid");
    assert_eq!(c.tcp_user_timeout(), Some(Duration::from_secs(3)));
    let mut args = base();
    args.extend(["--tcp-user-timeout-ms", "0"]);
    let c = Config::try_from_args(args).expect("valid");
    assert_eq!(c.tcp_user_timeout(), None);
    let mut args = base();
    args.extend(["--tcp-user-timeout-ms", "4294967296"]);
    let e = Config::try_from_args(args).unwrap_err();
    assert!(
        !e.contains('\n') && e.contains("TCP_USER_TIMEOUT_MS"),
        "{e}"
    );
    let mut args = base();
    args.extend(["--tcp-user-timeout-ms", "soon"]);
    let e = Config::try_from_args(args).unwrap_err();
    assert!(
        !e.contains('\n') && e.contains("--tcp-user-timeout-ms"),
        "{e}"
    );
}

#[test]
fn redis_url_from_parts() {
    let mut args = base();
    args.extend([
        "--redis-host",
        "h",
        "--redis-port",
        "1",
        "--redis-password",
        "p",
    ]);
    let c = Config::try_from_args(args).expect("valid");
    // The password is applied on top of the URL (no escaping needed), not written into it.
    assert_eq!(c.redis_url(), "redis://h:1/0");
    let s = c.redis().expect("redis");
    assert_eq!(s.password.as_deref(), Some("p"));
}

fn with(extra: &[&'static str]) -> Result<Config, String> {
    let mut args = base();
    args.extend(extra);
    Config::try_from_args(args)
}

#[test]
fn one_redis_is_the_default_mode_and_takes_credentials() {
    use redis_mode::{RedisMode, WaitSettings};
    let s = with(&[]).expect("valid").redis().expect("redis");
    assert_eq!(s.mode, RedisMode::Single("redis://127.0.0.1:6379/0".into()));
    assert_eq!(
        s.wait,
        WaitSettings {
            replicas: 0,
            timeout: Duration::from_millis(1000)
        }
    );
    let s = with(&["--redis-username", "u", "--redis-password", "p:@/x"])
        .expect("valid")
        .redis()
        .expect("redis");
    assert_eq!(
        (s.username.as_deref(), s.password.as_deref()),
        (Some("u"), Some("p:@/x"))
    );
    // The password never shows in a log line of the settings.
    assert!(!format!("{s:?}").contains("p:@/x"), "{s:?}");
}

#[test]
fn cluster_and_sentinel_modes_parse_their_addresses() {
    use redis_mode::{NodeAddr, RedisMode};
    let c = with(&[
        "--redis-cluster-nodes",
        "127.0.0.1:7000, redis-1:7001,[::1]:7002",
    ])
    .expect("valid");
    let RedisMode::Cluster { nodes } = c.redis().expect("redis").mode else {
        panic!("not cluster mode");
    };
    let shown: Vec<String> = nodes.iter().map(NodeAddr::to_string).collect();
    assert_eq!(shown, ["127.0.0.1:7000", "redis-1:7001", "[::1]:7002"]);
    let s = with(&[
        "--redis-sentinels",
        "s1:26379,s2:26379",
        "--redis-sentinel-master",
        "mymaster",
        "--redis-sentinel-password",
        "sp",
        "--redis-wait-replicas",
        "1",
        "--redis-wait-timeout-ms",
        "250",
    ])
    .expect("valid")
    .redis()
    .expect("redis");
    assert!(matches!(
        s.mode,
        RedisMode::Sentinel { ref sentinels, ref master, db: 0 }
            if sentinels.len() == 2 && master == "mymaster"
    ));
    assert_eq!(s.sentinel_password.as_deref(), Some("sp"));
    assert_eq!(
        (s.wait.replicas, s.wait.timeout),
        (1, Duration::from_millis(250))
    );
}

#[test]
fn two_redis_modes_stop_start_up_naming_both() {
    for (extra, names) in [
        (
            vec![
                "--redis-cluster-nodes",
                "a:1",
                "--redis-sentinels",
                "b:2",
                "--redis-sentinel-master",
                "m",
            ],
            ["REDIS_CLUSTER_NODES", "REDIS_SENTINELS"],
        ),
        (
            vec!["--redis-url", "redis://x", "--redis-cluster-nodes", "a:1"],
            ["REDIS_URL", "REDIS_CLUSTER_NODES"],
        ),
        (
            vec!["--redis-host", "h", "--redis-sentinel-master", "m"],
            ["REDIS_HOST", "REDIS_SENTINEL_MASTER"],
        ),
        (
            vec!["--redis-port", "1", "--redis-cluster-nodes", "a:1"],
            ["REDIS_PORT", "REDIS_CLUSTER_NODES"],
        ),
    ] {
        let e = with(&extra).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        for name in names {
            assert!(e.contains(name), "{extra:?}: {e}");
        }
    }
}

#[test]
fn bad_redis_mode_values_are_one_line_naming_the_setting() {
    for (extra, name) in [
        (vec!["--redis-cluster-nodes", "a"], "REDIS_CLUSTER_NODES"),
        (vec!["--redis-cluster-nodes", "a:0"], "REDIS_CLUSTER_NODES"),
        (
            vec!["--redis-cluster-nodes", "a:99999"],
            "REDIS_CLUSTER_NODES",
        ),
        (vec!["--redis-cluster-nodes", ","], "REDIS_CLUSTER_NODES"),
        (
            vec!["--redis-cluster-nodes", "::1:7000"],
            "REDIS_CLUSTER_NODES",
        ),
        (
            vec!["--redis-cluster-nodes", "a:1", "--redis-db", "2"],
            "REDIS_DB",
        ),
        (vec!["--redis-sentinels", "s:1"], "REDIS_SENTINEL_MASTER"),
        (vec!["--redis-sentinel-master", "m"], "REDIS_SENTINELS"),
        (
            vec!["--redis-sentinels", "s:1", "--redis-sentinel-master", " "],
            "REDIS_SENTINEL_MASTER",
        ),
        (
            vec!["--redis-sentinel-password", "p"],
            "REDIS_SENTINEL_PASSWORD",
        ),
        (vec!["--redis-url", "nope://x"], "REDIS_URL"),
        (
            vec!["--redis-url", "redis://x", "--redis-db", "1"],
            "REDIS_DB",
        ),
        (
            vec!["--redis-wait-timeout-ms", "0"],
            "REDIS_WAIT_TIMEOUT_MS",
        ),
        (
            vec!["--redis-wait-timeout-ms", "60001"],
            "REDIS_WAIT_TIMEOUT_MS",
        ),
        (vec!["--redis-wait-replicas", "x"], "--redis-wait-replicas"),
        (vec!["--redis-wait-replicas", "17"], "REDIS_WAIT_REPLICAS"),
        (vec!["--redis-username", ""], "REDIS_USERNAME"),
    ] {
        let e = with(&extra).unwrap_err();
        assert!(!e.contains('\n') && e.contains(name), "{extra:?}: {e}");
    }
}

#[test]
fn a_long_wait_timeout_is_warned_about() {
    let warned = |extra: &[&'static str]| {
        with(extra)
            .expect("valid")
            .warnings()
            .iter()
            .any(|w| w.contains("REDIS_WAIT_TIMEOUT_MS"))
    };
    assert!(!warned(&[]));
    assert!(!warned(&["--redis-wait-replicas", "1"]));
    assert!(warned(&[
        "--redis-wait-replicas",
        "1",
        "--redis-wait-timeout-ms",
        "5000"
    ]));
}
