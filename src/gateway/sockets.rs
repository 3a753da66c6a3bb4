//! This node's live sockets as presence sees them: each one's id and connect time, grouped by
//! user. Read by the presence handlers, the presence refresher and the drain.

use std::collections::HashMap;
use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use super::handshake::ConnectedAt;
use crate::auth::Identity;
use crate::presence::LocalSocket;

/// The socket's presence entry; `None` for a socket the handshake did not finish.
pub fn local_socket(s: &SocketRef) -> Option<LocalSocket> {
    let ConnectedAt(at) = s.extensions.get::<ConnectedAt>()?;
    Some(LocalSocket {
        sid: s.id.to_string(),
        connected_at: at.to_string(),
    })
}

/// This node's live sockets grouped by user.
pub fn local_sockets(io: &SocketIo) -> Vec<(String, Vec<LocalSocket>)> {
    let mut by_user: HashMap<String, Vec<LocalSocket>> = HashMap::new();
    // `io.of("/")`, not `io.sockets()`: the latter panics once a draining node closed `io`.
    let sockets = io.of("/").map(|ns| ns.sockets()).unwrap_or_default();
    for s in sockets {
        let (Some(identity), Some(me)) = (s.extensions.get::<Arc<Identity>>(), local_socket(&s))
        else {
            continue;
        };
        by_user
            .entry(identity.user_id.clone())
            .or_default()
            .push(me);
    }
    by_user.into_iter().collect()
}
