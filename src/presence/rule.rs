//! The one rule for "a socket field counts" (docs/protocol.md §4), Rust's half.
//!
//! The scripts apply it in Lua (`lua/presence_field_rule.lua`, put in front of every presence
//! script); the reads that are not scripts — `GET /api/v1/presence`, `presence:query`,
//! `presence:bulk-online`, the `MAX_CONNECTIONS_PER_USER` count — apply [`field_counts`]. Both
//! take the same `fresh_after` ([`fresh_after`]), and tests/it/scripts.rs runs both on
//! [`CASES`], so a change to one that the other does not follow fails a test.
//!
//! Why 2/3 of the TTL: live sockets are refreshed every TTL/3, so a field older than 2/3 of the
//! TTL has missed two refreshes — its node died or lost Redis — and it still stops counting
//! within the TTL, as the contract asks.

/// The oldest `lastSeen` (ms since the epoch) that still counts at `now_ms` with a presence
/// TTL of `ttl_ms`.
pub fn fresh_after(now_ms: u64, ttl_ms: u64) -> u64 {
    now_ms.saturating_sub(ttl_ms * 2 / 3)
}

/// Whether a field value (JSON) counts: a JSON object whose `lastSeen` is a number at or after
/// `fresh_after_ms`. Mirrors `field_counts` of `lua/presence_field_rule.lua`.
pub fn field_counts(json: &str, fresh_after_ms: u64) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.as_object()?.get("lastSeen")?.as_f64())
        // Lua compares doubles too; ms timestamps are far below 2^53, so this is exact.
        .is_some_and(|seen| seen >= fresh_after_ms as f64)
}

/// Field values, a `fresh_after`, and whether the field counts: the table both halves of the
/// rule are tested on.
pub const CASES: &[(&str, u64, bool)] = &[
    (
        r#"{"nodeId":"n","connectedAt":"t","lastSeen":1000}"#,
        1000,
        true,
    ),
    (
        r#"{"nodeId":"n","connectedAt":"t","lastSeen":1000}"#,
        999,
        true,
    ),
    (
        r#"{"nodeId":"n","connectedAt":"t","lastSeen":999}"#,
        1000,
        false,
    ),
    (r#"{"lastSeen":1733480000000}"#, 1733479999999, true),
    (r#"{"lastSeen":1733480000000}"#, 1733480000001, false),
    (r#"{"lastSeen":1000.5}"#, 1000, true),
    (r#"{"lastSeen":"1000"}"#, 0, false),
    (r#"{"lastSeen":null}"#, 0, false),
    (r#"{"nodeId":"n"}"#, 0, false),
    (r#"[1000]"#, 0, false),
    (r#"1000"#, 0, false),
    ("not json", 0, false),
    ("", 0, false),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rust_half_agrees_with_the_table() {
        for (json, fresh, counts) in CASES {
            assert_eq!(field_counts(json, *fresh), *counts, "{json} at {fresh}");
        }
    }

    #[test]
    fn a_field_counts_for_two_thirds_of_the_ttl() {
        assert_eq!(fresh_after(10_000, 3000), 8000);
        assert_eq!(fresh_after(1000, 3000), 0);
    }
}
