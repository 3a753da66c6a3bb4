//! Property tests of every parser that takes input from a client, a service or an operator:
//! whatever the input, they answer (a value or a clear error) and never panic. Case counts are
//! bounded so `make test` stays fast; `PROPTEST_CASES=100000 cargo test props` runs longer.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::backplane::Envelope;
use crate::config::Config;
use crate::gateway::chat::parse_send;
use crate::publish::PublishRequest;
use crate::routing::service_of;
use crate::validate::is_valid_id;

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map("[a-zA-Z]{1,10}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON objects whose keys are the ones the parsers look at, with arbitrary values.
fn payload_like() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "chatId",
        "roomId",
        "content",
        "clientMsgId",
        "type",
        "event",
        "data",
        "rooms",
        "users",
        "chats",
        "except",
    ]);
    prop::collection::hash_map(keys, json_value(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ids_accept_exactly_the_protocol_charset(s in ".{0,140}") {
        let expected = !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.:@-".contains(c));
        prop_assert_eq!(is_valid_id(&s), expected);
    }

    #[test]
    fn routed_names_are_three_clean_segments(s in "[a-zA-Z0-9_:\\- !é]{0,30}") {
        if let Some(service) = service_of(&s) {
            let parts: Vec<&str> = s.split(':').collect();
            prop_assert_eq!(parts.len(), 3);
            prop_assert_eq!(parts[0], service);
            prop_assert!(parts.iter().all(|p| !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')));
        }
    }

    #[test]
    fn chat_send_validation_never_panics(v in payload_like(), max in 1usize..64) {
        if let Some(obj) = v.as_object()
            && let Ok(req) = parse_send(obj, "chatId", max)
        {
            prop_assert!(is_valid_id(&req.chat_id));
            prop_assert!(!req.content.is_empty() && req.content.len() <= max);
        }
    }

    #[test]
    fn publish_requests_always_name_a_valid_target(v in payload_like()) {
        if let Some(obj) = v.as_object()
            && let Ok(req) = PublishRequest::parse(obj)
        {
            prop_assert!(!req.rooms.is_empty());
            prop_assert!(req.rooms.iter().all(|r| crate::publish::is_room_name(r)));
        }
    }

    #[test]
    fn envelope_decoding_never_panics(s in ".{0,200}", v in json_value()) {
        let _ = serde_json::from_str::<Envelope>(&s);
        let _ = serde_json::from_value::<Envelope>(v);
    }

    #[test]
    fn config_parsing_never_panics(args in prop::collection::vec("--?[a-z-]{0,20}|[0-9a-z:/]{0,12}", 0..8)) {
        let mut argv = vec!["fanout".to_owned()];
        argv.extend(args);
        let _ = Config::try_from_args(argv);
    }
}
