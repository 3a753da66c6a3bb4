//! Routed service events (docs/protocol.md §5): a client event named `service:module:name` is
//! appended to the Redis stream of its registered service, as an envelope whose `userId` comes
//! from the token. Services consume their stream with consumer groups and answer through the
//! server API or the `fanout:publish` stream.

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use crate::redis::Conn;

use crate::clock;
use crate::error::{ClientError, ErrorCode};
use store::{Envelope, ServiceStreams};

/// Who sent a routed event.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// User id from the token.
    pub user_id: &'a str,
    /// Socket id.
    pub socket_id: &'a str,
}

/// The service registry of `SERVICES` and the appender.
#[derive(Clone)]
pub struct Router {
    store: ServiceStreams,
    node_id: Arc<str>,
    streams: Arc<HashMap<String, String>>,
}

/// Splits a routed event name into its service, or says why it is not one: exactly three
/// non-empty segments of `[A-Za-z0-9_-]`.
pub fn service_of(event: &str) -> Option<&str> {
    let mut parts = event.split(':');
    let (Some(service), Some(module), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    (ok(service) && ok(module) && ok(name)).then_some(service)
}

impl Router {
    /// A router over the node's connection for the given (service, stream) pairs.
    pub fn new(
        conn: Conn,
        node_id: Arc<str>,
        services: Vec<(String, String)>,
        maxlen: u64,
    ) -> Self {
        Router {
            store: ServiceStreams::new(conn, maxlen),
            node_id,
            streams: Arc::new(services.into_iter().collect()),
        }
    }

    /// The stream of a registered service's event, or `INVALID_EVENT`.
    pub fn stream_for(&self, event: &str) -> Result<&str, ClientError> {
        let service = service_of(event).ok_or_else(|| {
            ClientError::new(
                ErrorCode::InvalidEvent,
                format!("unknown event {:?}", truncate(event)),
            )
        })?;
        self.streams
            .get(service)
            .map(String::as_str)
            .ok_or_else(|| {
                ClientError::new(
                    ErrorCode::InvalidEvent,
                    format!("no service {service:?} is registered"),
                )
            })
    }

    /// Appends the envelope of a routed event to its service's stream; returns the entry id.
    pub async fn route(
        &self,
        event: &str,
        origin: &Origin<'_>,
        payload_json: &str,
    ) -> Result<String, ClientError> {
        let stream = self.stream_for(event)?;
        let received_at = clock::now_iso();
        let envelope = Envelope {
            event,
            user_id: origin.user_id,
            socket_id: origin.socket_id,
            node_id: &self.node_id,
            payload_json,
            received_at: &received_at,
        };
        self.store
            .append(stream, &envelope)
            .await
            .map_err(|e| ClientError::from_redis(&e))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_names_have_exactly_three_clean_segments() {
        assert_eq!(service_of("stickyNotes:note:create"), Some("stickyNotes"));
        assert_eq!(service_of("a-b:c_d:E9"), Some("a-b"));
        for bad in [
            "a:b", "a:b:c:d", "a::c", ":b:c", "a:b:", "a b:c:d", "a:b:c!", "é:b:c", "",
        ] {
            assert_eq!(service_of(bad), None, "{bad:?}");
        }
    }
}
