//! What an API route can answer instead of success, and the one place that decides each answer's status
//! and body ([`ApiError::into_response`]). Routes return `Result<Response, ApiError>` and use `?`; the
//! dispatcher ([`super::handle`]) turns the error into the response. So the same failure gets the same
//! status on every route, and what a client sees of an internal failure is decided here: database and
//! object-store causes are logged, never sent (they can name hosts, users or SQL).

use crate::db::DbError;
use crate::http::response;
use crate::upload::UploadError;
use http::StatusCode;
use niks3_storage::StorageError;
use warp::reply::Response;

/// Longest message sent back: messages quote what the client sent, which may be anything (a message
/// quoting a 20 MB path must not become a 20 MB answer).
const MAX_MESSAGE_LEN: usize = 300;

/// Why a request was not carried out.
#[derive(Debug)]
pub enum ApiError {
    /// The request is malformed or breaks a rule (400).
    BadRequest(String),
    /// The token may not do this (403).
    Forbidden(String),
    /// No such route, session or object for this caller (404).
    NotFound(String),
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// The request contradicts what the cache holds or a session's state: retrying as is will not help,
    /// pushing again may (409).
    Conflict(String),
    /// The body or what it asks for is larger than allowed (413).
    TooLarge(String),
    /// The request is well-formed but cannot be carried out as asked (422).
    Unprocessable(String),
    /// PostgreSQL failed: 503 "database unavailable"; the cause is logged.
    Database(String),
    /// The object store failed: 502 "object store error"; the cause is logged.
    Storage(String),
    /// Something transient the client may retry, with a message safe to send (503).
    Unavailable(String),
    /// The caller is over one of its limits (open upload sessions): 429, retry later.
    TooMany(String),
    /// A bug or a task that died (500).
    Internal(String),
}

impl ApiError {
    /// A 400 with `msg`.
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    /// A 409 with `msg`.
    pub(crate) fn conflict(msg: impl Into<String>) -> Self {
        ApiError::Conflict(msg.into())
    }

    /// A failed publish, named by `what` (the path or paths): 503 when retrying may succeed (the
    /// database or store was down), else 409 (a reference missing, a NAR that does not match).
    pub fn publish(what: &str, e: &UploadError) -> Self {
        let msg = format!("publishing {what}: {e}");
        if e.is_transient() { ApiError::Unavailable(msg) } else { ApiError::Conflict(msg) }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Database(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Storage(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer `{"error": …}`; internal causes are logged here instead of sent.
    pub fn into_response(self) -> Response {
        match &self {
            ApiError::Database(cause) => tracing::warn!("database error in the API: {cause}"),
            ApiError::Storage(cause) => tracing::warn!("object store error in the API: {cause}"),
            ApiError::Internal(cause) => tracing::error!("internal error in the API: {cause}"),
            _ => {}
        }
        let mut r = response::json_error(self.status(), self.public_message());
        if matches!(self, ApiError::TooMany(_)) {
            // Sessions end within a push's time; a few seconds is a fair first wait.
            response::set(&mut r, http::header::RETRY_AFTER, "5");
        }
        r
    }

    /// What the client is told.
    fn public_message(&self) -> String {
        match self {
            ApiError::Database(_) => "database unavailable".to_owned(),
            ApiError::Storage(_) => "object store error".to_owned(),
            ApiError::Internal(_) => "internal error".to_owned(),
            ApiError::MethodNotAllowed => "method not allowed".to_owned(),
            ApiError::BadRequest(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::Unprocessable(m)
            | ApiError::Unavailable(m)
            | ApiError::TooMany(m) => clip(m, MAX_MESSAGE_LEN),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Database(e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ApiError::Storage(e.to_string())
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_sent_and_messages_are_clipped() {
        let e = ApiError::Database("connection to host=secret-db user=admin refused".to_owned());
        assert_eq!(
            (e.status(), e.public_message().as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        );
        let e = ApiError::Storage("s3 at https://key@bucket failed".to_owned());
        assert_eq!((e.status(), e.public_message().as_str()), (StatusCode::BAD_GATEWAY, "object store error"));
        let e = ApiError::bad("é".repeat(400));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.public_message().chars().count(), 151, "300 bytes of two-byte characters and the ellipsis");
    }
}
