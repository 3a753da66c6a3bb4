//! What the official `@socket.io/admin-ui` (0.5.1) expects on the wire: the serialized socket of
//! `all_sockets` / `socket_connected`, disconnect reasons in Socket.IO's words, the aggregated
//! event counts of `server_stats`, and event arguments spread as separate Socket.IO arguments.
//! No Redis, no sockets: plain data, unit-tested here.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, Uri, header};
use serde::Serialize;
use serde::ser::SerializeTuple;
use serde_json::{Map, Value, json};
use socketioxide::TransportType;
use socketioxide::socket::DisconnectReason;

/// Every feature the UI may use (`config.supportedFeatures`).
pub const FEATURES: [&str; 9] = [
    "EMIT",
    "JOIN",
    "LEAVE",
    "DISCONNECT",
    "MJOIN",
    "MLEAVE",
    "MDISCONNECT",
    "AGGREGATED_EVENTS",
    "ALL_EVENTS",
];

/// Most distinct (second, type, subType) rows kept between two stats ticks: a node's buffer
/// is bounded however many events arrive in 2 s (the counts still add up; new rows are dropped).
pub const MAX_AGGREGATED_ROWS: usize = 256;

/// Transport name as Socket.IO spells it.
pub fn transport_name(t: TransportType) -> &'static str {
    match t {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

/// A disconnect reason in the words of the JavaScript server (what the UI shows).
pub fn reason_text(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::MultipleHttpPollingError | DisconnectReason::PacketParsingError => {
            "parse error"
        }
        DisconnectReason::TransportError => "transport error",
        DisconnectReason::HeartbeatTimeout => "ping timeout",
        DisconnectReason::ClientNSDisconnect => "client namespace disconnect",
        DisconnectReason::ServerNSDisconnect => "server namespace disconnect",
        DisconnectReason::ClosingServer => "server shutting down",
    }
}

/// What the serialized socket is built from (read off a live socket by the caller).
pub struct SocketView<'a> {
    /// Socket id.
    pub id: &'a str,
    /// Namespace.
    pub nsp: &'a str,
    /// Current transport.
    pub transport: TransportType,
    /// The socket's user (`data.userId`); `None` for an `/admin` socket.
    pub user_id: Option<&'a str>,
    /// The headers the node kept of the handshake request.
    pub headers: &'a HeaderMap,
    /// The handshake request's URI.
    pub uri: &'a Uri,
    /// When the socket connected, milliseconds since the epoch.
    pub issued_ms: u64,
    /// Its rooms.
    pub rooms: Vec<String>,
}

/// Headers never shown to the UI: credentials.
fn is_secret_header(name: &header::HeaderName) -> bool {
    name == header::AUTHORIZATION
        || name == header::COOKIE
        || name == header::PROXY_AUTHORIZATION
        || name == header::SET_COOKIE
}

/// Query parameters never shown to the UI: a client may put a token there even though the node
/// never reads it (docs/protocol.md §1).
fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("token") || n.contains("auth") || n.contains("password") || n.contains("session")
}

/// The socket as the UI's `all_sockets` / `socket_connected` carry it: `{ id, clientId,
/// transport, nsp, data, handshake, rooms }`. `data` holds the user id only (never the token);
/// credentials are taken out of the headers and the query.
pub fn serialize_socket(v: &SocketView<'_>) -> Value {
    let mut headers = Map::new();
    for (name, value) in v.headers {
        if is_secret_header(name) {
            continue;
        }
        if let Ok(text) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(text.to_owned()));
        }
    }
    let mut query = Map::new();
    let mut kept = Vec::new();
    for pair in v
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
        if is_secret_param(k) {
            continue;
        }
        query.insert(k.to_owned(), Value::String(val.to_owned()));
        kept.push(pair);
    }
    let url = if kept.is_empty() {
        v.uri.path().to_owned()
    } else {
        format!("{}?{}", v.uri.path(), kept.join("&"))
    };
    let data = match v.user_id {
        Some(user) => json!({ "userId": user }),
        None => json!({}),
    };
    json!({
        "id": v.id,
        // The JavaScript server shows the first 12 characters of the Engine.IO id; socketioxide
        // does not expose it to handlers, and a socket has one engine connection here.
        "clientId": v.id.chars().take(12).collect::<String>(),
        "transport": transport_name(v.transport),
        "nsp": v.nsp,
        "data": data,
        "handshake": {
            // The node keeps no peer address of a socket (nor proxy headers: section 1).
            "address": "",
            "headers": headers,
            "query": query,
            "issued": v.issued_ms,
            "secure": false,
            "time": crate::clock::iso_from_ms(v.issued_ms),
            "url": url,
            "xdomain": v.headers.contains_key(header::ORIGIN),
        },
        "rooms": v.rooms,
    })
}

/// `Vec<Value>` sent as separate Socket.IO arguments (socketioxide spreads tuples; a `Vec` would
/// be one array argument).
pub struct Args<'a>(pub &'a [Value]);

impl Serialize for Args<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

/// Every argument of a received event, as separate values. socketioxide hands a handler the
/// first argument unless the extracted type is a tuple; this one deserializes as a tuple of any
/// length, so it gets them all.
#[derive(Debug, Default)]
pub struct AllArgs(pub Vec<Value>);

impl<'de> serde::Deserialize<'de> for AllArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = AllArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the arguments of an event")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<AllArgs, S::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    out.push(v);
                }
                Ok(AllArgs(out))
            }
        }
        d.deserialize_tuple(usize::MAX, Seq)
    }
}

/// The per-second event counts of `server_stats.aggregatedEvents`, kept between two stats ticks.
#[derive(Default)]
pub struct EventCounts {
    rows: Mutex<HashMap<RowKey, u64>>,
}

/// (second in ms, type, subType) of an aggregated row.
type RowKey = (u64, &'static str, Option<String>);

impl EventCounts {
    /// Counts `n` events of `kind` (`rawConnection`, `rawDisconnection`, `packetsIn`, ...)
    /// in the current second.
    pub fn push(&self, kind: &'static str, sub_type: Option<&str>, n: u64) {
        let second = crate::clock::now_ms() / 1000 * 1000;
        let key = (second, kind, sub_type.map(str::to_owned));
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        if let Some(count) = rows.get_mut(&key) {
            *count += n;
        } else if rows.len() < MAX_AGGREGATED_ROWS {
            rows.insert(key, n);
        }
    }

    /// The rows `{ timestamp, type, subType, count }` since the last call, oldest first.
    pub fn take(&self) -> Vec<Value> {
        let Ok(mut rows) = self.rows.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = rows.drain().collect();
        out.sort_by_key(|((ts, kind, _), _)| (*ts, *kind));
        out.into_iter()
            .map(|((timestamp, kind, sub_type), count)| {
                json!({ "timestamp": timestamp, "type": kind, "subType": sub_type, "count": count })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serialized_socket_carries_no_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        headers.insert(header::COOKIE, "sid=1".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        let uri: Uri = "/socket.io/?EIO=4&transport=websocket&token=abc"
            .parse()
            .unwrap();
        let v = serialize_socket(&SocketView {
            id: "abcdefghijklmnop",
            nsp: "/",
            transport: TransportType::Websocket,
            user_id: Some("alice"),
            headers: &headers,
            uri: &uri,
            issued_ms: 1_700_000_000_000,
            rooms: vec!["user:alice".into()],
        });
        let text = v.to_string();
        assert!(!text.contains("secret") && !text.contains("sid=1") && !text.contains("abc\""));
        assert_eq!(v["data"], json!({ "userId": "alice" }));
        assert_eq!(v["clientId"], "abcdefghijkl");
        assert_eq!(v["handshake"]["query"]["EIO"], "4");
        assert_eq!(
            v["handshake"]["url"],
            "/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(v["handshake"]["headers"]["upgrade"], "websocket");
    }

    #[test]
    fn event_counts_add_up_and_stay_bounded() {
        let c = EventCounts::default();
        c.push("packetsIn", None, 1);
        c.push("packetsIn", None, 2);
        let rows = c.take();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["count"], 3);
        assert!(c.take().is_empty());
        for i in 0..(MAX_AGGREGATED_ROWS + 10) {
            c.push("rawDisconnection", Some(&i.to_string()), 1);
        }
        assert_eq!(c.take().len(), MAX_AGGREGATED_ROWS);
    }

    #[test]
    fn all_args_reads_every_argument() {
        let a: AllArgs = serde_json::from_str(r#"["/", "room", {"x": 1}]"#).unwrap();
        assert_eq!(a.0.len(), 3);
    }

    #[test]
    fn args_are_spread() {
        let args = [json!("a"), json!(1)];
        assert_eq!(serde_json::to_value(Args(&args)).unwrap(), json!(["a", 1]));
    }
}
