//! A connection driven by the task that holds it: each request is written and its replies read
//! by the caller itself, with no background task between them. For connections lent to one
//! task at a time ([`super::Exclusive`]), where nothing is interleaved and so nothing needs
//! the multiplexer.
//!
//! Why not a lent [`redis::aio::MultiplexedConnection`]: its driver task sits between the
//! caller and the socket, so every round trip wakes two tasks (often on two worker threads)
//! besides the socket's own wake-up. The send transaction makes two round trips per message,
//! and those wake-ups were most of what it cost the node over the script's one (measured in
//! docs/benchmarks.md, "The send transaction on connections of its own"). Framing and parsing
//! stay redis-rs's: commands are packed by [`redis::Cmd`] and [`redis::Pipeline`], and replies
//! are cut out of the bytes read by `redis::ValueCodec`, the decoder of redis-rs's own async
//! connections. redis-rs marks that export hidden (its `Parser` reads past the first reply, so
//! it cannot frame a pipeline's replies); the version is pinned in Cargo.lock, and an upgrade
//! that drops it fails the build, not a request.
//!
//! A request that fails half-way (a timeout, a closed socket, a reply that does not parse)
//! leaves replies unread, so the connection refuses every later request; its owner drops it.

use std::time::Duration;

use bytes::BytesMut;
use redis::aio::ConnectionLike;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisFuture, Value,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

/// Bytes read from the socket at most per `read`; replies of the lent connections are small.
const READ_CHUNK: usize = 4096;

/// A plain (RESP2) connection to one Redis server; see the module doc.
pub struct Direct {
    read: Box<dyn AsyncRead + Send + Unpin>,
    write: Box<dyn AsyncWrite + Send + Unpin>,
    /// Bytes read and not yet parsed.
    buf: BytesMut,
    /// The reply decoder, with the state of a reply read in part.
    codec: redis::ValueCodec,
    /// How long one request (all of its replies) may take.
    timeout: Duration,
    db: i64,
    /// A request failed half-way: replies may be pending, so the connection is unusable.
    broken: bool,
}

impl Direct {
    /// Connects to `info`'s address within `connect_timeout` and authenticates and selects its
    /// database as redis-rs would; every later request may take `timeout`.
    pub async fn connect(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> redis::RedisResult<Direct> {
        let connecting = async {
            let (read, write): (
                Box<dyn AsyncRead + Send + Unpin>,
                Box<dyn AsyncWrite + Send + Unpin>,
            ) = match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    // Requests are whole pipelines written at once: Nagle would only delay them.
                    stream.set_nodelay(true)?;
                    let (r, w) = stream.into_split();
                    (Box::new(r), Box::new(w))
                }
                #[cfg(unix)]
                ConnectionAddr::Unix(path) => {
                    let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
                    (Box::new(r), Box::new(w))
                }
                other => {
                    return Err(RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "no direct connection for this address",
                        other.to_string(),
                    )));
                }
            };
            Ok::<_, RedisError>(Direct {
                read,
                write,
                buf: BytesMut::with_capacity(READ_CHUNK),
                codec: redis::ValueCodec::default(),
                timeout,
                db: info.redis_settings().db(),
                broken: false,
            })
        };
        let mut conn = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| timed_out("connect"))??;
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            let _: () = auth.query_async(&mut conn).await?;
        }
        if conn.db != 0 {
            let _: () = redis::cmd("SELECT")
                .arg(conn.db)
                .query_async(&mut conn)
                .await?;
        }
        Ok(conn)
    }

    /// Writes `packed` and reads `replies` replies; the one place that touches the socket.
    async fn round_trip(
        &mut self,
        packed: &[u8],
        replies: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        if self.broken {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "connection broken by an earlier failed request",
            )));
        }
        // Broken until proven otherwise: a cancelled or failed request leaves it so.
        self.broken = true;
        let timeout = self.timeout;
        let values = tokio::time::timeout(timeout, async {
            self.write.write_all(packed).await?;
            let mut values = Vec::with_capacity(replies);
            while values.len() < replies {
                values.push(self.next_value().await?);
            }
            Ok::<_, RedisError>(values)
        })
        .await
        .map_err(|_| timed_out("response"))??;
        self.broken = false;
        Ok(values)
    }

    /// The next reply: decoded from what was read, reading more while it is incomplete.
    async fn next_value(&mut self) -> redis::RedisResult<Value> {
        loop {
            if let Some(value) = self.codec.decode(&mut self.buf)? {
                return Ok(value);
            }
            self.buf.reserve(READ_CHUNK);
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                )));
            }
        }
    }
}

/// A timeout as redis-rs reports one ([`RedisError::is_timeout`] holds).
fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

impl ConnectionLike for Direct {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut values = self.round_trip(&cmd.get_packed_command(), 1).await?;
            values
                .pop()
                .ok_or_else(|| RedisError::from((ErrorKind::Client, "a request without its reply")))
        })
    }

    /// As redis-rs's own connections: the first `offset` replies are skipped (a transaction's
    /// `OK` and `QUEUED`s); an error among them aborts the transaction, and `EXEC` says so
    /// with `EXECABORT`, which is what is returned then.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut values = self
                .round_trip(&pipeline.get_packed_pipeline(), offset + count)
                .await?;
            let queued_failed = values[..offset.min(values.len())]
                .iter()
                .any(|v| matches!(v, Value::ServerError(_)));
            let mut kept = values.split_off(offset.min(values.len()));
            if queued_failed {
                // EXEC's reply is the `EXECABORT` error; anything else would be a server bug,
                // reported as the same abort.
                return Err(match kept.pop() {
                    Some(Value::ServerError(e)) => RedisError::from(e),
                    _ => RedisError::from((
                        ErrorKind::Server(redis::ServerErrorKind::ExecAbort),
                        "a queued command of the transaction failed",
                    )),
                });
            }
            Ok(kept)
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
