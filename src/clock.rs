//! Wall-clock helpers in the protocol's formats.

use time::OffsetDateTime;
use time::macros::format_description;

/// Now as ISO 8601 UTC with milliseconds, e.g. `2026-11-22T09:00:00.000Z`.
pub fn now_iso() -> String {
    iso(OffsetDateTime::now_utc())
}

/// A time as ISO 8601 UTC with milliseconds.
pub fn iso(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// A time given in milliseconds since the Unix epoch, as ISO 8601 UTC with milliseconds.
pub fn iso_from_ms(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    iso(t)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_has_millis_and_z() {
        let s = super::iso(time::macros::datetime!(2026-11-22 09:00:00.123 UTC));
        assert_eq!(s, "2026-11-22T09:00:00.123Z");
    }
}
