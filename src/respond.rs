//! A reference responder for blocking callbacks: answers every gift and room message on the
//! bus with one configured decision, after an optional delay. Each bus backend owns how it
//! subscribes and replies (`Bus::respond`); this module only forms the reply.

use std::time::Duration;

use bytes::Bytes;

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
    /// Waits the configured delay and returns the reply.
    pub async fn answer(&self) -> Bytes {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        reply(self.code)
    }
}
