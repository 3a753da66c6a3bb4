//! Payload validation shared by the gateway and the API: ids, strings, the JSON shapes of
//! docs/protocol.md. Every failure names the field so the client knows what to fix.

use serde_json::{Map, Value};

use crate::error::ClientError;

/// Longest id (docs/protocol.md conventions).
pub const MAX_ID_LEN: usize = 128;
/// Longest `clientMsgId`.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;

/// True for a string of 1–128 characters from `[A-Za-z0-9_.:@-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// The payload as a JSON object, or `INVALID_PAYLOAD`.
pub fn object(payload: &Value) -> Result<&Map<String, Value>, ClientError> {
    payload
        .as_object()
        .ok_or_else(|| ClientError::invalid("payload must be a JSON object"))
}

/// A required id field.
pub fn id_field(obj: &Map<String, Value>, field: &str) -> Result<String, ClientError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(ClientError::invalid(format!("{field} is required"))),
        Some(Value::String(s)) if is_valid_id(s) => Ok(s.clone()),
        Some(Value::String(_)) => Err(ClientError::invalid(format!(
            "{field} must be 1-128 characters of [A-Za-z0-9_.:@-]"
        ))),
        Some(_) => Err(ClientError::invalid(format!("{field} must be a string"))),
    }
}

/// A required id field of a payload that may itself have failed to parse.
pub fn id_field_of(
    obj: Result<&Map<String, Value>, ClientError>,
    field: &str,
) -> Result<String, ClientError> {
    id_field(obj?, field)
}

/// An optional string field (`null` counts as absent).
pub fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ClientError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ClientError::invalid(format!("{field} must be a string"))),
    }
}

/// An optional non-negative integer field.
pub fn opt_u64(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ClientError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ClientError::invalid(format!("{field} must be a non-negative integer"))),
    }
}

/// A required boolean field.
pub fn bool_field(obj: &Map<String, Value>, field: &str) -> Result<bool, ClientError> {
    match obj.get(field) {
        Some(Value::Bool(b)) => Ok(*b),
        None | Some(Value::Null) => Err(ClientError::invalid(format!("{field} is required"))),
        Some(_) => Err(ClientError::invalid(format!("{field} must be a boolean"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("user_1.x:y@z-2"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("{x}"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn fields_name_themselves() {
        let v = json!({"chatId": 5, "n": -1, "b": "x"});
        let o = object(&v).unwrap();
        assert_eq!(
            id_field(o, "chatId").unwrap_err().message,
            "chatId must be a string"
        );
        assert_eq!(id_field(o, "x").unwrap_err().message, "x is required");
        assert!(opt_u64(o, "n").unwrap_err().message.contains("n must be"));
        assert!(
            bool_field(o, "b")
                .unwrap_err()
                .message
                .contains("b must be a boolean")
        );
        assert!(object(&json!([1])).is_err());
    }
}
