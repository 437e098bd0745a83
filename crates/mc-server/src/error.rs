//! The HTTP edge's one error type.
//!
//! Rule: handlers and services return [`ApiError`]; nothing else becomes a response.
//! Client errors carry their message to the caller. Internal errors answer a generic
//! "Internal Server Error" and are logged once, with the request id, by the request
//! middleware (which also stamps `request_id` into every error body). Store errors are
//! mapped here, by constraint, and nowhere else.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mc_domain::enrollment::EnrollmentRefusal;
use mc_domain::{FieldError, ValidationErrors};
use mc_store::{Constraint, StoreError};
use serde_json::{Value, json};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no valid credential.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// 403: a valid credential without the permission.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: the named thing does not exist.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with stored state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 413: the body is over the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 422: invalid input, by field.
    #[error("validation: {0}")]
    Validation(ValidationErrors),
    /// 502: an OpenClaw gateway Mission Control had to contact failed; the message says
    /// how (it never holds a secret).
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// 503: a dependency (the database) is unavailable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 503: the database gave up the request's transaction for colliding with a concurrent
    /// one (nothing was written; a retry may succeed). Logged: it points at a lock-order bug.
    #[error("contention: {0}")]
    Contention(String),
    /// 500: a bug or an unexpected failure; the detail is logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

/// The error detail placed on a response; the request middleware turns it into the
/// `{"detail": ..., "request_id": ...}` body.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// The `detail` value sent to the client.
    pub detail: Value,
    /// For internal errors: what to log (never sent).
    pub log: Option<String>,
}

impl ApiError {
    /// A 422 for one field.
    pub fn field(error: FieldError) -> Self {
        Self::Validation(ValidationErrors::one(error))
    }

    /// A 422 for one body field.
    pub fn body_field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(ValidationErrors::body(field, message))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Contention(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> Value {
        match self {
            Self::Unauthorized(message) => json!(message),
            Self::Forbidden(message) | Self::Conflict(message) | Self::BadGateway(message) => {
                json!(message)
            }
            Self::NotFound(message) => json!(message),
            Self::MethodNotAllowed => json!("Method Not Allowed"),
            Self::PayloadTooLarge => {
                json!("request body is larger than the server's limit (--max-body-bytes)")
            }
            Self::Validation(errors) => Value::Array(
                errors
                    .0
                    .iter()
                    .map(|e| json!({"loc": e.loc, "msg": e.message, "type": e.kind}))
                    .collect(),
            ),
            Self::Unavailable(_) => json!("the database is unavailable; retry shortly"),
            Self::Contention(_) => {
                json!("the change collided with a concurrent one and was not saved; retry it")
            }
            Self::Internal(_) => json!("Internal Server Error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = self.detail();
        let log = match &self {
            Self::Internal(reason) | Self::Unavailable(reason) | Self::Contention(reason) => {
                Some(reason.clone())
            }
            _ => None,
        };
        let mut response = (self.status(), Json(json!({ "detail": detail }))).into_response();
        response
            .extensions_mut()
            .insert(ErrorDetail { detail, log });
        response
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        Self::Validation(errors)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(Constraint::AgentNameOnBoard) => {
                Self::Conflict("An agent with this name already exists on this board.".into())
            }
            StoreError::Conflict(Constraint::BoardSlug) => {
                Self::Conflict("A board with this slug already exists.".into())
            }
            StoreError::Conflict(Constraint::GatewayHasBoards) => Self::Conflict(
                "The gateway still has boards; delete them or move them to another gateway first."
                    .into(),
            ),
            StoreError::Conflict(Constraint::GatewayMainAgent) => {
                Self::Conflict("The gateway already has its main agent.".into())
            }
            StoreError::Conflict(Constraint::TokenDigest) => {
                Self::Internal("token digest collision".into())
            }
            StoreError::EnrollmentRefused(refusal) => Self::from(refusal),
            StoreError::Unavailable(reason) => Self::Unavailable(reason),
            StoreError::Contention(reason) => Self::Contention(reason),
            other @ (StoreError::Internal(_)
            | StoreError::Corrupt { .. }
            | StoreError::Config(_)) => Self::Internal(other.to_string()),
        }
    }
}

impl From<EnrollmentRefusal> for ApiError {
    fn from(refusal: EnrollmentRefusal) -> Self {
        Self::Unauthorized(refusal.message())
    }
}

/// Result alias for handlers and services.
pub type ApiResult<T> = Result<T, ApiError>;
