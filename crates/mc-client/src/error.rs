//! The client's one error type, and the single place that decides which failures are
//! worth retrying.
//!
//! Rule: every method of [`crate::Client`] returns [`ClientError`]; its message names the
//! request and the reason (never a secret). [`ClientError::failure`] classifies it for
//! callers that retry (the heartbeat loop): network trouble, timeouts, 5xx, 408 and 429
//! are transient; 401 and 403 mean the credentials are refused; anything else (a wrong
//! URL, an answer that is not what the API promises) will not fix itself.

use std::time::Duration;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL cannot be used (not http/https, unparsable, with a query...).
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request never got an answer: connection refused, DNS, TLS, timeout, reset.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// The server answered with a non-success status.
    #[error("{method} {path} answered {status}: {detail}")]
    Status {
        /// The request method.
        method: &'static str,
        /// The request path.
        path: String,
        /// The HTTP status code.
        status: u16,
        /// The `detail` of the error body, or the start of the body.
        detail: String,
        /// The server's `Retry-After`, when it gave one in seconds.
        retry_after: Option<Duration>,
    },
    /// A success status whose answer is not what the API promises.
    #[error("malformed answer from {method} {path}: {reason}")]
    MalformedResponse {
        /// The request method.
        method: &'static str,
        /// The request path.
        path: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

/// How a caller that retries should treat a [`ClientError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying later, no sooner than `retry_after` when the server asked so.
    Transient {
        /// The server's requested delay, if any.
        retry_after: Option<Duration>,
    },
    /// The server refused the credentials (401) or their permission (403): retrying
    /// with the same token cannot help.
    CredentialsRefused,
    /// A configuration or protocol problem that retrying cannot fix.
    Permanent,
}

impl ClientError {
    /// Classifies the error for retrying callers.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Unreachable { .. } => Failure::Transient { retry_after: None },
            Self::Status {
                status,
                retry_after,
                ..
            } => match *status {
                401 | 403 => Failure::CredentialsRefused,
                408 | 429 | 500..=599 => Failure::Transient {
                    retry_after: *retry_after,
                },
                _ => Failure::Permanent,
            },
            Self::InvalidBaseUrl { .. } | Self::MalformedResponse { .. } => Failure::Permanent,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `Retry-After` in its delay-seconds form; the HTTP-date form is not used by the server
/// and reads as absent.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error and its sources on one line: transport errors hide the useful part
/// ("connection refused") in their source chain.
pub(crate) fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry_after: Option<Duration>) -> ClientError {
        ClientError::Status {
            method: "POST",
            path: "/api/v1/agent/heartbeat".into(),
            status: code,
            detail: "x".into(),
            retry_after,
        }
    }

    #[test]
    fn server_errors_throttling_and_network_trouble_are_transient() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(
                matches!(status(code, None).failure(), Failure::Transient { .. }),
                "{code}"
            );
        }
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            unreachable.failure(),
            Failure::Transient { retry_after: None }
        );
    }

    #[test]
    fn a_requested_retry_delay_is_carried_along() {
        let error = status(429, Some(Duration::from_secs(7)));
        assert_eq!(
            error.failure(),
            Failure::Transient {
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn refused_credentials_are_neither_transient_nor_generic() {
        assert_eq!(status(401, None).failure(), Failure::CredentialsRefused);
        assert_eq!(status(403, None).failure(), Failure::CredentialsRefused);
    }

    #[test]
    fn other_client_errors_and_malformed_answers_are_permanent() {
        for code in [400, 404, 405, 409, 413, 422] {
            assert_eq!(status(code, None).failure(), Failure::Permanent, "{code}");
        }
        let malformed = ClientError::MalformedResponse {
            method: "POST",
            path: "/x".into(),
            reason: "not JSON".into(),
        };
        assert_eq!(malformed.failure(), Failure::Permanent);
    }

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
