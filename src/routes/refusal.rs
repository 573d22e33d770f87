//! Why a callback was refused: the HTTP status, the text of Tencent's FAIL body, and the
//! `reason` label of `hookbus_rejections_total`.

use hyper::StatusCode;

use crate::body::BodyError;
use crate::outbox::PushError;
use crate::spool::SpoolError;

/// Why a callback was refused: the status, the Tencent FAIL body and the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Carries the method that is allowed.
    #[error("method not allowed: use {0}")]
    MethodNotAllowed(&'static str),
    #[error("not found")]
    NotFound,
    #[error("the app (SdkAppid, or a CSS body's appid) is not one this gateway serves")]
    Forbidden,
    /// A signature missing, stale or not matching, in the words and label of its surface.
    #[error("{reason}")]
    Unauthorized { label: &'static str, reason: &'static str },
    #[error("body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("body not received in time")]
    BodyTimeout,
    #[error("{reason}")]
    BadRequest { label: &'static str, reason: &'static str },
    /// Carries the metric label: `outbox_full` or `spool_full`.
    #[error("outbox full, try again later")]
    Overloaded(&'static str),
    #[error("spool write failed, try again later")]
    SpoolFailed,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Refusal::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Refusal::Overloaded(_) | Refusal::SpoolFailed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label of `hookbus_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::MethodNotAllowed(_) => "method",
            Refusal::NotFound => "not_found",
            Refusal::Forbidden => "sdkappid",
            Refusal::Unauthorized { label, .. } => label,
            Refusal::PayloadTooLarge(_) => "too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BadRequest { label, .. } => label,
            Refusal::Overloaded(label) => label,
            Refusal::SpoolFailed => "spool_error",
        }
    }

    /// A 400 with its label and reason.
    pub fn bad(label: &'static str, reason: &'static str) -> Refusal {
        Refusal::BadRequest { label, reason }
    }

    /// A 401 with its label and reason.
    pub fn unauthorized(label: &'static str, reason: &'static str) -> Refusal {
        Refusal::Unauthorized { label, reason }
    }
}

/// A body that is not one JSON object within the limits.
impl From<BodyError> for Refusal {
    fn from(invalid: BodyError) -> Refusal {
        Refusal::bad(invalid.label(), invalid.reason())
    }
}

impl From<PushError> for Refusal {
    fn from(refused: PushError) -> Refusal {
        match refused {
            PushError::Full(_) | PushError::FullBytes(_) => Refusal::Overloaded("outbox_full"),
            PushError::Spool(SpoolError::Full(_)) => Refusal::Overloaded("spool_full"),
            // Logged by the outbox, at most once a second.
            PushError::Spool(SpoolError::Io(_)) => Refusal::SpoolFailed,
        }
    }
}
