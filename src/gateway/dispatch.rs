//! Event dispatch: every client event of a socket, by name, to its family's handler table.
//! The only module that knows the event files; they know only the seams ([`super::ack`],
//! [`super::handshake`], [`super::sockets`]).

use std::sync::Arc;

use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::Event;
use socketioxide::handler::{FromMessageParts, MessageHandler};
use socketioxide::socket::Socket;

use super::{chat, presence, routing, session};

/// Every client event of a socket, dispatched by name to its family: [`chat`], [`presence`],
/// else [`routing`] (service events, or `INVALID_EVENT`). Registered as the socket's one
/// fallback handler: socketioxide keeps a map of named handlers per socket, ~670 bytes for our
/// 15 names on every socket for a table that is the same for all of them; this one is the
/// node's, and the per-socket map stays empty.
pub struct Events;

impl MessageHandler<LocalAdapter, ()> for Events {
    fn call(
        &self,
        s: Arc<Socket<LocalAdapter>>,
        mut v: socketioxide::handler::Value,
        ack_id: Option<i64>,
    ) {
        // socketioxide read the name before it called us; were it unreadable, routing answers.
        let handler = match Event::from_message_parts(&s, &mut v, &ack_id) {
            Ok(Event(name)) => chat::handler(&name)
                .or_else(|| presence::handler(&name))
                .or_else(|| session::handler(&name)),
            Err(_) => None,
        };
        handler.unwrap_or(routing::HANDLER)(s, v, ack_id);
    }
}
