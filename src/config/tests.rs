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
    assert_eq!(c.redis_url(), "redis://:p@h:1/0");
}
