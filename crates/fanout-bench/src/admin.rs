//! The few server-API calls the bench makes (create and delete its rooms), over a minimal
//! HTTP/1.1 client: one connection per request, `Connection: close`.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the server API is and how to authenticate.
#[derive(Clone)]
pub struct Admin {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub api_key: String,
}

impl Admin {
    /// Sends one request; returns the status and the body (JSON or `Null`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let fut = async {
            let mut s = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connect {host}:{}: {e}", self.port))?;
            let req = format!(
                "{method} {}{path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n\
                 Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                self.prefix,
                self.port,
                self.api_key,
                body.len()
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let text = String::from_utf8_lossy(&buf);
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad HTTP answer {text:?}"))?;
            let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let body = if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(rest)
            } else {
                rest.to_owned()
            };
            Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| format!("{method} {path}: timed out"))?
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
