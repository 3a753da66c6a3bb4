//! Event dispatch: every client event of a socket, by name, to its family's handler table.
//! The only module that knows the event files; they know only the seams ([`super::ack`],
//! [`super::handshake`], [`super::sockets`]).

use std::sync::Arc;

use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{Event, SocketRef, State, TryData};
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
            Ok(Event(name)) => {
                admin_hook(&s, &v, &name);
                chat::handler(&name)
                    .or_else(|| presence::handler(&name))
                    .or_else(|| session::handler(&name))
            }
            Err(_) => None,
        };
        handler.unwrap_or(routing::HANDLER)(s, v, ack_id);
    }
}

/// Tells the Admin UI, when enabled, that the socket sent `name` (its arguments are read only
/// when `ADMIN_UI_SHOW_EVENTS` shows them).
fn admin_hook(s: &Arc<Socket<LocalAdapter>>, v: &socketioxide::handler::Value, name: &str) {
    // Its own state entry, so this costs one Arc clone per event, not a clone of `App`.
    let Ok(State(Some(admin))) =
        State::<Option<crate::admin::Admin>>::from_message_parts(s, &mut v.clone(), &None)
    else {
        return;
    };
    let Ok(socket) = SocketRef::<LocalAdapter>::from_message_parts(s, &mut v.clone(), &None);
    admin.event_received(&socket, name, v.len(), || {
        let mut copy = v.clone();
        match TryData::<crate::admin::protocol::AllArgs>::from_message_parts(s, &mut copy, &None) {
            Ok(TryData(Ok(crate::admin::protocol::AllArgs(args)))) => args,
            _ => Vec::new(),
        }
    });
}
