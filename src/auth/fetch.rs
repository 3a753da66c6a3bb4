//! One HTTP(S) GET of a JSON Web Key Set: the only outbound HTTP a node makes.
//!
//! hyper's bare HTTP/1 client over a fresh connection per fetch (a fetch happens every few
//! minutes, so pooling would only keep an idle socket open), rustls with Mozilla's roots for
//! `https`. Every step is bounded: the whole fetch by [`FETCH_TIMEOUT`], the body by
//! [`MAX_BODY`], so a slow or hostile endpoint cannot hold a node.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Longest one fetch may take, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest key set accepted (identity providers publish a few keys: a few KiB).
pub const MAX_BODY: usize = 256 * 1024;

/// A validated key-set address: `http` or `https`, with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    uri: Uri,
    tls: bool,
    host: String,
    port: u16,
}

impl JwksUrl {
    /// Parses `JWT_JWKS_URL`, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<JwksUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL ({e})"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be http or https".into()),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(JwksUrl {
            uri,
            tls,
            host,
            port,
        })
    }

    /// The URL as configured (for logs).
    pub fn as_str(&self) -> String {
        self.uri.to_string()
    }
}

/// Why a fetch failed; `Display` is the warning a node logs.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer within [`FETCH_TIMEOUT`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
    /// The endpoint answered something other than 200.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The body is larger than [`MAX_BODY`].
    #[error("the key set is larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// GETs `url` and returns the body of a 200 answer.
pub async fn get(url: &JwksUrl) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, get_unbounded(url))
        .await
        .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
}

async fn get_unbounded(url: &JwksUrl) -> Result<Bytes, FetchError> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| FetchError::Transport(format!("connect {}:{}: {e}", url.host, url.port)))?;
    if url.tls {
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| FetchError::Transport(format!("TLS server name {}: {e}", url.host)))?;
        let config = TLS.clone().map_err(FetchError::Transport)?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Transport(format!("TLS with {}: {e}", url.host)))?;
        request(url, tls).await
    } else {
        request(url, tcp).await
    }
}

async fn request<S>(url: &JwksUrl, stream: S) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = |e: hyper::Error| FetchError::Transport(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(transport)?;
    // The connection task ends when the answer is read or the request is dropped (timeout).
    let conn = tokio::spawn(conn);
    let path = url.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = url
        .uri
        .authority()
        .map_or(url.host.as_str(), |a| a.as_str());
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("fanout/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    let res = sender.send_request(req).await.map_err(transport)?;
    if res.status() != StatusCode::OK {
        conn.abort();
        return Err(FetchError::Status(res.status()));
    }
    let body = Limited::new(res.into_body(), MAX_BODY).collect().await;
    conn.abort();
    match body {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
        Err(e) => Err(FetchError::Transport(e.to_string())),
    }
}

/// One TLS client setup for the process: ring's provider and Mozilla's roots (a node image
/// need not carry a CA bundle). An error here would be a build without TLS versions ring
/// supports: it fails each https fetch, clearly, instead of the node.
static TLS: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // ring, not aws-lc-rs: it builds with the C compiler alone. rustls deprecates ring's
    // provider for lacking post-quantum key exchange; what travels here is a public key set,
    // whose integrity (the server's certificate) is what TLS must protect today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("TLS set-up: {e}"))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = JwksUrl::parse("https://idp.example/.well-known/jwks.json").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("idp.example", 443));
        let u = JwksUrl::parse("http://127.0.0.1:8080/keys?v=1").unwrap();
        assert!(!u.tls);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(u.uri.path_and_query().unwrap().as_str(), "/keys?v=1");
        let u = JwksUrl::parse("http://[::1]:9/k").unwrap();
        assert_eq!(u.host, "::1");
        for bad in ["ftp://x/k", "/just/a/path", "https://", "not a url", ""] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
