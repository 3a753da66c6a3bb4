//! The node's drain (PROTOCOL.md §7, docs/architecture.md section 8): what a stopping node does
//! with its sockets and their presence before it exits.

use socketioxide::SocketIo;

use crate::gateway::local_sockets;
use crate::presence::{Presence, PresenceError};

/// Removes every local socket's presence, announcing users left with no socket.
pub async fn remove_all(io: &SocketIo, presence: &Presence) -> Result<(), PresenceError> {
    for (user, sockets) in local_sockets(io) {
        for socket in sockets {
            presence.disconnect(&user, &socket.sid).await?;
        }
    }
    Ok(())
}
