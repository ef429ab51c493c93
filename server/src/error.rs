//! The one mapping from errors to HTTP responses.
//!
//! Every error the server answers with, from any route, is an [`ApiError`]
//! turned into a response by [`ApiError::into_response`], which always sends
//! `{"error": {"code": "...", "message": "..."}}` as `application/json` with
//! `Cache-Control: no-store` (Garage's shape).
//!
//! **Invariant:** the `code` is a stable machine-readable string (clients
//! match on it); the `message` is for humans and may change. Internal errors
//! (storage, I/O) are logged with their detail and answered with a message
//! that does not leak paths or internals.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::http::body::Body;

/// A boxed error from a lower layer (the engine), kept for the log.
pub type SourceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a request can fail with, each with its precise status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: a bad query parameter, a broken multipart body.
    #[error("{message}")]
    BadRequest { message: String },
    /// No `Authorization: Bearer ...` header on a route that needs one.
    #[error("this route needs an Authorization: Bearer token")]
    Unauthorized,
    /// A bearer token was presented that this server never issued (RFC 6750
    /// `invalid_token`: the credentials are wrong, so 401, not 403).
    #[error("the token is not valid for this server (see tokens.toml in its data directory)")]
    InvalidToken,
    /// A valid token was presented but it does not grant this route.
    #[error("the token does not grant this operation")]
    Forbidden,
    /// A resource (track, blob) that does not exist.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// No route matches the path.
    #[error("no route for {path}")]
    NoRoute { path: String },
    /// The route exists but not for this method; `allow` lists the methods.
    #[error("method {method} not allowed here (allowed: {allow})")]
    MethodNotAllowed { method: String, allow: &'static str },
    /// The client took too long sending its request.
    #[error("the request was not received in time")]
    RequestTimeout,
    /// A state conflict, e.g. a quality tier that is not transcoded yet.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A precondition header (`If-Match`, `If-Unmodified-Since`) failed.
    #[error("a precondition of the request failed")]
    PreconditionFailed,
    /// The request body is larger than allowed for this route.
    #[error("the request body exceeds the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: u64 },
    /// The request body's media type cannot be handled on this route.
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    /// A `Range` that selects no byte of a representation of `length_bytes`.
    #[error("the range selects no byte of the {length_bytes}-byte representation")]
    RangeNotSatisfiable { length_bytes: u64 },
    /// The request head is too large or has too many fields.
    #[error("{message}")]
    HeadersTooLarge { message: String },
    /// The server is starting or shutting down.
    #[error("the server is not ready: {reason}")]
    Unavailable { reason: &'static str },
    /// A failure of the storage engine; the detail goes to the log only.
    #[error("internal storage error while {context}")]
    Storage {
        context: &'static str,
        #[source]
        source: SourceError,
    },
    /// Any other failure of the server itself (a bug or an I/O error).
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// A 500 for an engine failure while doing `context`.
    pub fn storage(context: &'static str, source: impl Into<SourceError>) -> Self {
        Self::Storage {
            context,
            source: source.into(),
        }
    }

    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound { .. } | Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Storage { .. } | Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::InvalidToken => "invalid_token",
            Self::Forbidden => "forbidden",
            Self::NotFound { .. } => "not_found",
            Self::NoRoute { .. } => "no_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict { code, .. } => code,
            Self::PreconditionFailed => "precondition_failed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::HeadersTooLarge { .. } => "request_header_fields_too_large",
            Self::Unavailable { .. } => "unavailable",
            Self::Storage { .. } => "storage_error",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// The JSON body `{"error": {"code": ..., "message": ...}}`.
    pub fn body_json(&self) -> String {
        serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        })
        .to_string()
    }

    /// The response: status, JSON body and the headers the status calls for
    /// (`WWW-Authenticate` on 401, `Allow` on 405, `Content-Range` on 416).
    /// Internal errors are logged here with their source chain.
    pub fn into_response(self) -> Response<Body> {
        if let Self::Storage { context, source } = &self {
            tracing::error!(context, error = %source, "storage error");
        } else if let Self::Internal { message } = &self {
            tracing::error!(message, "internal error");
        }
        let status = self.status();
        let body = Bytes::from(self.body_json());
        let mut response = Response::new(Body::full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"spindle\""),
                );
            }
            Self::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"spindle\", error=\"invalid_token\""),
                );
            }
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::RangeNotSatisfiable { length_bytes } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length_bytes}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
            }
            Self::PayloadTooLarge { .. } | Self::HeadersTooLarge { .. } | Self::RequestTimeout => {
                // The rest of the request is not read, so the connection
                // cannot be reused.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<ApiError> for Response<Body> {
    fn from(error: ApiError) -> Self {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_of(response: Response<Body>) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn every_error_maps_to_its_status_code_and_json() {
        let io = || std::io::Error::other("disk on fire at /secret/path");
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::bad_request("bad kind"), 400, "bad_request"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::InvalidToken, 401, "invalid_token"),
            (ApiError::NotFound { what: "track" }, 404, "not_found"),
            (ApiError::NoRoute { path: "/x".into() }, 404, "no_route"),
            (
                ApiError::MethodNotAllowed {
                    method: "PUT".into(),
                    allow: "GET, HEAD",
                },
                405,
                "method_not_allowed",
            ),
            (ApiError::RequestTimeout, 408, "request_timeout"),
            (
                ApiError::Conflict {
                    code: "tier_not_ready",
                    message: "low is not transcoded yet".into(),
                },
                409,
                "tier_not_ready",
            ),
            (ApiError::PreconditionFailed, 412, "precondition_failed"),
            (
                ApiError::PayloadTooLarge { limit_bytes: 10 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType {
                    message: "no".into(),
                },
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::RangeNotSatisfiable { length_bytes: 7 },
                416,
                "range_not_satisfiable",
            ),
            (
                ApiError::HeadersTooLarge {
                    message: "too many".into(),
                },
                431,
                "request_header_fields_too_large",
            ),
            (
                ApiError::Unavailable {
                    reason: "shutting down",
                },
                503,
                "unavailable",
            ),
            (ApiError::storage("reading", io()), 500, "storage_error"),
            (
                ApiError::Internal {
                    message: "x".into(),
                },
                500,
                "internal_error",
            ),
        ];
        for (error, status, code) in cases {
            let message = error.to_string();
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{code}"
            );
            let json = body_of(response);
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["message"], message.as_str());
            assert!(!message.contains("/secret/path"), "{code} leaks: {message}");
        }
    }

    #[test]
    fn status_specific_headers_are_set() {
        let r = ApiError::Unauthorized.into_response();
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let r = ApiError::MethodNotAllowed {
            method: "POST".into(),
            allow: "GET, HEAD",
        }
        .into_response();
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        let r = ApiError::RangeNotSatisfiable { length_bytes: 42 }.into_response();
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */42");
        let r = ApiError::PayloadTooLarge { limit_bytes: 1 }.into_response();
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn messages_with_quotes_stay_valid_json() {
        let json = body_of(ApiError::bad_request("a \"quoted\"\nline").into_response());
        assert_eq!(json["error"]["message"], "a \"quoted\"\nline");
    }
}
