//! Applying backplane actions to this node's sockets (socketioxide's local adapter).

use std::str::FromStr;

use socketioxide::SocketIo;
use socketioxide::socket::Sid;

use super::Action;

/// Applies `actions` in order. `origin` is the publishing node, used for `except_sid`.
pub async fn apply(io: &SocketIo, node_id: &str, origin: &str, actions: &[Action]) {
    for action in actions {
        match action {
            Action::Emit {
                rooms,
                except,
                except_sid,
                event,
                data,
            } => {
                let sender = except_sid
                    .as_deref()
                    .filter(|_| origin == node_id)
                    .and_then(|sid| Sid::from_str(sid).ok())
                    .and_then(|sid| io.get_socket(sid));
                // `socket.to(..)` is a broadcast that skips that socket; `io.to(..)` skips none.
                let op = match &sender {
                    Some(s) => s.to(rooms.clone()),
                    None => io.to(rooms.clone()),
                };
                let res = op.except(except.clone()).emit(event, data).await;
                if let Err(e) = res {
                    // Only per-socket failures (a full send buffer, a closing socket) land here.
                    tracing::debug!(event = %event, error = %e, "local delivery incomplete");
                }
            }
            Action::Join { of, join } => {
                if let Err(e) = io.to(of.clone()).join(join.clone()).await {
                    tracing::debug!(error = %e, "local join failed");
                }
            }
            Action::Leave { of, leave } => {
                if let Err(e) = io.to(of.clone()).leave(leave.clone()).await {
                    tracing::debug!(error = %e, "local leave failed");
                }
            }
        }
    }
}
