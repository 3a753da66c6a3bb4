//! The services' streams in Redis: one `XADD` per routed event, its envelope one stream field
//! per key (docs/protocol.md §8), trimmed approximately to `SERVICE_STREAM_MAXLEN`.

use crate::redis::Conn;

/// A routed event as its service reads it.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The client's event name, `service:module:name`.
    pub event: &'a str,
    /// Who sent it, from the token.
    pub user_id: &'a str,
    /// The sending socket.
    pub socket_id: &'a str,
    /// The node that received it.
    pub node_id: &'a str,
    /// The client's payload, serialized JSON.
    pub payload_json: &'a str,
    /// When the node received it, ISO 8601.
    pub received_at: &'a str,
}

/// Appends to the services' streams over the node's shared connection.
#[derive(Clone)]
pub struct ServiceStreams {
    conn: Conn,
    maxlen: u64,
}

impl ServiceStreams {
    /// Streams trimmed to about `maxlen` entries.
    pub fn new(conn: Conn, maxlen: u64) -> Self {
        ServiceStreams { conn, maxlen }
    }

    /// Appends `envelope` to `stream`; returns the entry id (the routed event's id).
    pub async fn append(&self, stream: &str, e: &Envelope<'_>) -> redis::RedisResult<String> {
        let mut conn = self.conn.clone();
        redis::cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("event")
            .arg(e.event)
            .arg("userId")
            .arg(e.user_id)
            .arg("socketId")
            .arg(e.socket_id)
            .arg("nodeId")
            .arg(e.node_id)
            .arg("payload")
            .arg(e.payload_json)
            .arg("receivedAt")
            .arg(e.received_at)
            .query_async(&mut conn)
            .await
    }
}
