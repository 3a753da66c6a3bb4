//! Opening a connection: the websocket upgrade request, the TCP connection (bound, with
//! `TCP_NODELAY` and receive timestamps as asked), the Engine.IO OPEN and the namespace CONNECT
//! with its auth payload.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::transport::Transport;
use crate::{ClientError, ConnectOptions, Ws};

/// Engine.IO OPEN packet payload (the fields we use).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket {
    ping_interval: u64,
    ping_timeout: u64,
}

/// Builds the websocket upgrade request: URL, query and extra headers.
pub(crate) fn build_request(base_url: &str, opts: &ConnectOptions) -> Result<Request, ClientError> {
    let base = base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(ClientError::InvalidRequest(format!(
            "unsupported URL scheme: {base_url}"
        )));
    };
    let mut url = format!("{base}/socket.io/?EIO=4&transport=websocket");
    for (key, value) in &opts.query {
        url.push_str(&format!(
            "&{}={}",
            percent_encode(key),
            percent_encode(value)
        ));
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::InvalidRequest(format!("{url}: {e}")))?;
    for (name, value) in &opts.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ClientError::InvalidRequest(format!("header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| ClientError::InvalidRequest(format!("header {name}: {e}")))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Opens the websocket: bound to `opts.local_addr` when set, with `TCP_NODELAY`, receive
/// timestamps and the websocket settings of `opts`. Plain `ws://` only (the crate builds
/// tungstenite without TLS).
async fn open(request: Request, opts: &ConnectOptions) -> Result<Ws, ClientError> {
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(ClientError::InvalidRequest(format!(
            "{uri}: only ws:// (or http://) URLs are supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::InvalidRequest(format!("no host in {uri}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let mut candidates: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if let Some(local) = opts.local_addr {
        candidates.retain(|a| a.is_ipv4() == local.is_ipv4());
    }
    let mut last_err = None;
    for addr in candidates {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(local) = opts.local_addr {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                if opts.tcp_nodelay {
                    stream.set_nodelay(true)?;
                }
                let transport = if opts.rx_timestamps {
                    Transport::stamped(stream)?
                } else {
                    Transport::plain(stream)
                };
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(request, transport, opts.ws_config)
                        .await?;
                return Ok(ws);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.map(ClientError::Io).unwrap_or_else(|| {
        ClientError::InvalidRequest(format!("no usable address for {host}:{port}"))
    }))
}

/// Opens the websocket, reads the Engine.IO OPEN and joins namespace `/`.
/// Returns the stream, the Socket.IO sid and the liveness limit (pingInterval + pingTimeout).
pub(crate) async fn handshake(
    request: Request,
    opts: &ConnectOptions,
) -> Result<(Ws, String, Duration), ClientError> {
    let auth = opts.auth.as_ref();
    let mut ws = open(request, opts).await?;
    let open = next_text(&mut ws).await?;
    let open: OpenPacket = open
        .strip_prefix('0')
        .and_then(|body| serde_json::from_str(body).ok())
        .ok_or_else(|| ClientError::Protocol(format!("expected Engine.IO OPEN, got {open:?}")))?;
    let liveness = Duration::from_millis(open.ping_interval.saturating_add(open.ping_timeout));
    let connect = match auth {
        Some(auth) => format!("40{auth}"),
        None => "40".to_owned(),
    };
    ws.send(Message::text(connect)).await?;
    loop {
        let text = next_text(&mut ws).await?;
        if let Some(body) = text.strip_prefix("40") {
            let sid = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("sid")?.as_str().map(str::to_owned))
                .ok_or_else(|| ClientError::Protocol(format!("bad CONNECT answer {text:?}")))?;
            return Ok((ws, sid, liveness));
        } else if let Some(body) = text.strip_prefix("44") {
            let message = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| body.to_owned());
            return Err(ClientError::Refused(message));
        } else if let Some(payload) = text.strip_prefix('2') {
            ws.send(Message::text(format!("3{payload}"))).await?;
        } else if text == "1" || text.starts_with("41") {
            return Err(ClientError::Closed);
        } else {
            tracing::debug!(packet = %text, "ignoring packet before namespace CONNECT");
        }
    }
}

/// Next text frame of the websocket, skipping control and binary frames.
async fn next_text(ws: &mut Ws) -> Result<String, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}
