//! Every Redis command of the Admin UI: its sessions (a key with a TTL each) and publishing on
//! its pub/sub channel. The subscription itself is the relay's own connection
//! ([`super::relay`]).

use crate::redis::Conn;

use crate::redis::keys;

/// How long an issued Admin UI session stays valid (the official in-memory store never forgets
/// one; a day keeps a UI tab logged in across reconnects without keeping ids forever).
pub const SESSION_TTL_SECS: u64 = 86_400;

/// The Admin UI's Redis commands, on the node's shared connection.
#[derive(Clone)]
pub struct AdminStore {
    conn: Conn,
}

impl AdminStore {
    /// A store on `conn`.
    pub fn new(conn: Conn) -> Self {
        AdminStore { conn }
    }

    /// Remembers a session id issued at a login, for [`SESSION_TTL_SECS`].
    pub async fn save_session(&self, session_id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(keys::admin_session(session_id))
            .arg(1)
            .arg("EX")
            .arg(SESSION_TTL_SECS)
            .query_async(&mut conn)
            .await
    }

    /// Whether `session_id` was issued (on any node) and has not expired.
    pub async fn session_exists(&self, session_id: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("EXISTS")
            .arg(keys::admin_session(session_id))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// Publishes relay messages on [`keys::ADMIN_CHANNEL`], in order, in one pipeline.
    pub async fn publish(&self, messages: &[String]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for m in messages {
            pipe.cmd("PUBLISH").arg(keys::ADMIN_CHANNEL).arg(m).ignore();
        }
        pipe.query_async(&mut conn).await
    }
}
