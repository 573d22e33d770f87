//! A reference responder for blocking callbacks: answers every gift and room message on the
//! bus with one configured decision, after an optional delay. This module chooses the
//! commands and forms the reply; the bus only serves requests (`Bus::serve_requests`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::bus::{Answer, Bus, BusError, Ready};
use crate::tencent::Blocking;

/// The reply body a responder sends for `code`: exactly what it would answer Tencent.
pub fn reply(code: i64) -> Bytes {
    let info = if code == 0 { "" } else { "denied by hookbus respond" };
    Bytes::from(serde_json::json!({ "ErrorCode": code, "ErrorInfo": info }).to_string())
}

/// The configured behaviour of `hookbus respond`.
#[derive(Debug, Clone, Copy)]
pub struct Responder {
    pub code: i64,
    pub delay: Duration,
}

impl Responder {
    /// Answers every blocking command under `prefix` until the bus link fails. Responders
    /// share the requests through the group `hookbus-responders.{prefix}`; `ready` fires once
    /// requests are being received.
    pub async fn run(self, bus: &Bus, prefix: &str, ready: Ready) -> Result<(), BusError> {
        let destinations = Blocking::ALL.map(|kind| format!("{prefix}.{}", kind.command()));
        let answer: Answer = Arc::new(move |_destination, _body| Box::pin(self.answer()));
        bus.serve_requests(&destinations, &format!("hookbus-responders.{prefix}"), answer, ready).await
    }

    /// Waits the configured delay and returns the reply.
    async fn answer(self) -> Bytes {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        reply(self.code)
    }
}
