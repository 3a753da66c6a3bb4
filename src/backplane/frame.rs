//! The one wire form of everything that travels between nodes: a [`Frame`] published to the
//! pub/sub channel of each room it targets (`crate::redis::keys::room_channel`).

use serde::{Deserialize, Serialize};

use super::Envelope;

/// What a room channel carries: the publishing node (for `exceptSid`, which only that node can
/// resolve) and the actions to apply, in order. `chat_send.lua` publishes the frame of a
/// `chat:message` cut from this form (see `crate::redis::scripts::chat_send`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frame {
    /// The publishing node's id.
    #[serde(rename = "n")]
    pub origin: String,
    /// The actions, applied in order.
    #[serde(rename = "e")]
    pub actions: Envelope,
    /// When the frame was built, ms since the epoch on the publisher's clock (delivery latency).
    #[serde(rename = "t", default)]
    pub at_ms: Option<u64>,
}

impl Frame {
    /// The JSON of a frame of `actions` published by `origin` now.
    pub fn to_json(origin: &str, actions: &Envelope) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            n: &'a str,
            t: u64,
            e: &'a Envelope,
        }
        serde_json::to_string(&Borrowed {
            n: origin,
            t: crate::clock::now_ms(),
            e: actions,
        })
    }
}
