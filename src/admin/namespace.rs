//! The `/admin` namespace: the login middleware (a session id, else the username and the bcrypt
//! hash), what a logged-in admin socket is sent first (`session`, `config`, `all_sockets`), and
//! the UI's commands, turned into [`Command`]s for every node.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use super::protocol::{self, FEATURES};
use super::relay::{Command, Message};
use super::{Admin, NAMESPACE};

/// The session id issued at this socket's login, emitted once it is connected.
#[derive(Clone)]
struct IssuedSession(Arc<str>);

/// Why an `/admin` handshake was refused: the official server's only message.
#[derive(Debug, thiserror::Error)]
#[error("invalid credentials")]
pub struct InvalidCredentials;

impl Admin {
    /// Adds the `/admin` namespace to `io` (its login middleware and handlers).
    pub fn register(&self, io: &SocketIo) {
        let _ = self.inner.io.set(io.clone());
        let on_connect = {
            let admin = self.clone();
            move |s: SocketRef| {
                let admin = admin.clone();
                async move { admin.on_admin_connect(s).await }
            }
        };
        let login = {
            let admin = self.clone();
            move |s: SocketRef, TryData(auth): TryData<Value>| {
                let admin = admin.clone();
                async move { admin.login(s, auth.ok()).await }
            }
        };
        io.ns(NAMESPACE, on_connect.with(login));
    }

    /// The login middleware: a session id issued earlier (on any node), else the username and
    /// the password checked against the bcrypt hash (on a blocking thread).
    async fn login(&self, s: SocketRef, auth: Option<Value>) -> Result<(), InvalidCredentials> {
        let auth = auth.unwrap_or(Value::Null);
        let field = |k: &str| auth.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(sid) = field("sessionId")
            && !sid.is_empty()
            && sid.len() <= 64
        {
            match self.inner.store.session_exists(&sid).await {
                Ok(true) => {
                    crate::metrics::admin_login("session");
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "admin session lookup failed"),
            }
        }
        let (Some(user), Some(password)) = (field("username"), field("password")) else {
            crate::metrics::admin_login("refused");
            return Err(InvalidCredentials);
        };
        // The hash is checked whatever the name, so a wrong name takes as long as a wrong
        // password (the answer does not tell which one was wrong, nor does its timing).
        let password_ok = self.verify(password).await;
        if user != self.inner.settings.username || !password_ok {
            crate::metrics::admin_login("refused");
            return Err(InvalidCredentials);
        }
        let session = uuid::Uuid::new_v4().simple().to_string();
        if let Err(e) = self.inner.store.save_session(&session).await {
            // The login still counts; the UI's reconnect will ask for the password again.
            tracing::warn!(error = %e, "admin session not saved");
        }
        s.extensions.insert(IssuedSession(session.into()));
        crate::metrics::admin_login("password");
        Ok(())
    }

    async fn verify(&self, password: String) -> bool {
        let Ok(_slot) = self.inner.bcrypt.acquire().await else {
            return false;
        };
        let hash = self.inner.settings.password_hash.clone();
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }

    /// A logged-in admin socket: its session, `config`, then `all_sockets` of every node.
    async fn on_admin_connect(&self, s: SocketRef) {
        for (event, op) in [
            ("emit", Op::Emit),
            ("join", Op::Join),
            ("leave", Op::Leave),
            ("_disconnect", Op::Disconnect),
        ] {
            let admin = self.clone();
            s.on(
                event,
                move |Data(protocol::AllArgs(args)): Data<protocol::AllArgs>| {
                    let admin = admin.clone();
                    async move { admin.command(op, args) }
                },
            );
        }
        if let Some(IssuedSession(id)) = s.extensions.get::<IssuedSession>() {
            s.emit("session", &*id).ok();
        }
        s.emit("config", &json!({ "supportedFeatures": FEATURES }))
            .ok();
        self.watched();
        let sockets = self.fetch_all().await;
        s.emit("all_sockets", &(sockets,)).ok();
    }

    /// Turns a UI command into a [`Command`] for every node; anything malformed is ignored (the
    /// UI gets no answer to commands).
    fn command(&self, op: Op, args: Vec<Value>) {
        let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or("").to_owned();
        // Only the chat sockets of `/` can be acted on.
        if text(0) != "/" {
            return;
        }
        let command = match op {
            Op::Emit => {
                let event = text(2);
                if event.is_empty() {
                    return;
                }
                Command::Emit {
                    filter: text(1),
                    event,
                    args: args.get(3..).map(<[Value]>::to_vec).unwrap_or_default(),
                }
            }
            Op::Join | Op::Leave => {
                let (room, filter) = (text(1), text(2));
                if room.is_empty() {
                    return;
                }
                if matches!(op, Op::Join) {
                    Command::Join { room, filter }
                } else {
                    Command::Leave { room, filter }
                }
            }
            Op::Disconnect => Command::Disconnect { filter: text(2) },
        };
        self.publish(&Message::Command {
            from: self.inner.node_id.to_string(),
            command,
        });
    }
}

/// The UI commands, by their event names.
#[derive(Clone, Copy)]
enum Op {
    Emit,
    Join,
    Leave,
    Disconnect,
}
