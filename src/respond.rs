//! A reference responder for blocking callbacks: answers every documented blocking callback
//! (and the commands its rules name) with one configured decision after an optional delay, or
//! with the first of its rules (`--rules`, the `when = "always"` ones) that matches. This
//! module chooses the commands and forms the reply; the bus only serves requests
//! (`Bus::serve_requests`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::bus::{request_destination, Answer, Bus, BusError, Ready};
use crate::rules::{Rules, When};
use crate::tencent::BLOCKING;

/// The reply body a responder sends for `code`: exactly what it would answer Tencent.
pub fn reply(code: i64, info: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "ErrorCode": code, "ErrorInfo": info }).to_string())
}

/// The configured behaviour of `hookbus respond`.
#[derive(Debug, Clone, Default)]
pub struct Responder {
    pub code: i64,
    pub delay: Duration,
    pub rules: Arc<Rules>,
}

impl Responder {
    /// Answers the decision requests of every blocking command under `prefix`
    /// (`{prefix}.decide.{command}`) until the bus link fails. Responders
    /// share the requests through the group `hookbus-responders.{prefix}`; `ready` fires once
    /// requests are being received.
    pub async fn run(self, bus: &Bus, prefix: &str, ready: Ready) -> Result<(), BusError> {
        let mut commands: Vec<String> = BLOCKING.iter().map(|blocking| blocking.command.to_owned()).collect();
        commands.extend(
            self.rules
                .commands()
                .filter(|command| !commands.iter().any(|c| c == command))
                .map(String::from)
                .collect::<Vec<_>>(),
        );
        let destinations: Vec<String> = commands.iter().map(|command| request_destination(prefix, command)).collect();
        // The command is what follows `{prefix}.decide.`.
        let start = request_destination(prefix, "").len();
        let responder = Arc::new(self);
        let answer: Answer = Arc::new(move |destination, body| {
            let (responder, command) = (responder.clone(), destination.get(start..).unwrap_or_default().to_owned());
            Box::pin(async move { responder.answer(&command, &body).await })
        });
        bus.serve_requests(&destinations, &format!("hookbus-responders.{prefix}"), answer, ready).await
    }

    /// Waits the configured delay and returns the reply: the first matching rule's, else the
    /// configured decision.
    async fn answer(&self, command: &str, body: &[u8]) -> Bytes {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let rule = self
            .rules
            .has(command, When::Always)
            .then(|| serde_json::from_slice(body).ok())
            .flatten()
            .and_then(|body| self.rules.first(command, When::Always, &body));
        match rule {
            Some(rule) if rule.code == 0 => reply(0, ""),
            Some(rule) => reply(rule.code, &format!("denied by rule {}", rule.name)),
            None if self.code == 0 => reply(0, ""),
            None => reply(self.code, "denied by hookbus respond"),
        }
    }
}
