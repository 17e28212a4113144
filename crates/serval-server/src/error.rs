//! The server's error type and its one mapping to HTTP status codes and gRPC statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why a request failed, sorted by who is to blame.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    /// Errors from the model repository, validation and engines.
    #[error(transparent)]
    Core(#[from] serval_core::Error),
    /// The request is malformed at the protocol level (client's fault).
    #[error("{0}")]
    BadRequest(String),
    /// No such route, model, version or label (client's fault).
    #[error("{0}")]
    NotFound(String),
    /// The request body exceeds the configured limit (client's fault).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The model's queue is full: retry later (overload).
    #[error("model '{0}' is overloaded: its queue is full, retry later")]
    Overloaded(String),
    /// The server already handles its limit of concurrent requests (overload).
    #[error("server is at its limit of {0} concurrent requests, retry later")]
    Busy(usize),
    /// The server's memory budget for requests in flight is taken: retry later (overload).
    #[error("{0}")]
    OutOfMemory(String),
    /// The request waited or ran longer than its deadline (overload).
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    /// The model is not loaded or not ready.
    #[error("{0}")]
    Unavailable(String),
    /// The request needs a feature this server was started without.
    #[error("{0}")]
    NotEnabled(String),
    /// The request may not do this (a cross-origin page changing the server's state, a token
    /// without the scope).
    #[error("{0}")]
    Forbidden(String),
    /// The request carries no valid token, and the endpoint needs one.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request body arrived too slowly (client's fault, or a slowloris).
    #[error("{0}")]
    SlowBody(String),
}

impl ServerError {
    /// The HTTP status for this error (the single table for every REST protocol).
    pub fn status(&self) -> StatusCode {
        use serval_core::Error as E;
        match self {
            ServerError::Core(E::InvalidInput(_)) | ServerError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ServerError::Core(
                E::ModelNotFound(_) | E::VersionNotFound { .. } | E::SignatureNotFound { .. },
            )
            | ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::Core(E::Load { .. }) | ServerError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServerError::Core(E::Inference { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            ServerError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::Overloaded(_) | ServerError::Busy(_) | ServerError::OutOfMemory(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ServerError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServerError::NotEnabled(_) => StatusCode::NOT_IMPLEMENTED,
            ServerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServerError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServerError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// Longest error message sent to a client, in bytes. Messages quote what the client sent
/// (names, keys, values); a megabyte-long name must not come back whole, and over gRPC it would
/// not even fit the metadata a status travels in.
const MAX_MESSAGE_BYTES: usize = 1024;

impl ServerError {
    /// The message as a client receives it: at most about [`MAX_MESSAGE_BYTES`], its middle cut
    /// (saying how much) when longer, so that both what it is about and the reason at its end
    /// survive a huge quoted name.
    pub fn client_message(&self) -> String {
        let message = self.to_string();
        if message.len() <= MAX_MESSAGE_BYTES {
            return message;
        }
        let floor = |mut i: usize| {
            while !message.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let head = floor(MAX_MESSAGE_BYTES * 5 / 8);
        let tail = floor(message.len() - MAX_MESSAGE_BYTES / 4);
        format!(
            "{} …({} bytes cut)… {}",
            &message[..head],
            tail - head,
            &message[tail..]
        )
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.client_message();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %message, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %message, "request rejected");
        }
        let body = serde_json::json!({ "error": message });
        let mut response = (status, axum::Json(body)).into_response();
        if self.status() == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ServerError::Unauthenticated(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"serval\""),
            );
        }
        response
    }
}

impl From<ServerError> for tonic::Status {
    fn from(err: ServerError) -> tonic::Status {
        let message = err.client_message();
        match err.status() {
            StatusCode::BAD_REQUEST => tonic::Status::invalid_argument(message),
            StatusCode::NOT_FOUND => tonic::Status::not_found(message),
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
                tonic::Status::resource_exhausted(message)
            }
            StatusCode::GATEWAY_TIMEOUT => tonic::Status::deadline_exceeded(message),
            StatusCode::SERVICE_UNAVAILABLE => tonic::Status::unavailable(message),
            StatusCode::NOT_IMPLEMENTED => tonic::Status::unimplemented(message),
            StatusCode::FORBIDDEN => tonic::Status::permission_denied(message),
            StatusCode::UNAUTHORIZED => tonic::Status::unauthenticated(message),
            StatusCode::REQUEST_TIMEOUT => tonic::Status::deadline_exceeded(message),
            _ => tonic::Status::internal(message),
        }
    }
}

/// Shorthand for results of request handling.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_lose_their_middle_at_character_boundaries_saying_how_much() {
        let name = "é".repeat(100_000);
        let message =
            ServerError::NotFound(format!("no model '{name}' (the reason)")).client_message();
        assert!(message.len() < MAX_MESSAGE_BYTES + 40, "{}", message.len());
        assert!(message.starts_with("no model 'éé"), "{message}");
        assert!(message.ends_with("éé' (the reason)"), "{message}");
        assert!(message.contains(" bytes cut)… "), "{message}");
        let short = ServerError::NotFound("no model 'x'".into()).client_message();
        assert_eq!(short, "no model 'x'");
    }
}
