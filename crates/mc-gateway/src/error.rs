//! The one error type of this crate, and the one place where the gateway's error codes,
//! details and messages are mapped onto it.
//!
//! Rule: every failure a caller can see is a [`GatewayError`], classified by what the
//! operator (or a retrying job) should do about it. Transport failures are classified in
//! [`GatewayError::from_transport`]; error frames sent by the gateway in
//! [`GatewayError::from_gateway`]. The `Display` text is the operator-facing wording shown in
//! the gateway status; it never contains the gateway token.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The lowest and highest protocol versions this client speaks.
pub const SUPPORTED_PROTOCOLS: std::ops::RangeInclusive<u32> = 3..=4;

/// An error frame as the gateway sends it (`{"code","message","details"?,...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayErrorShape {
    /// The gateway's error code, e.g. `INVALID_REQUEST`, `NOT_PAIRED`, `UNAVAILABLE`.
    #[serde(default)]
    pub code: String,
    /// The human-readable message; most method failures are told apart only by it.
    #[serde(default)]
    pub message: String,
    /// Structured details, e.g. `{"code":"PAIRING_REQUIRED","requestId":...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// Whether the gateway says a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// How long the gateway asks the client to wait before retrying.
    #[serde(
        default,
        rename = "retryAfterMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after_ms: Option<u64>,
}

impl GatewayErrorShape {
    /// The `details.code` string, if any (v4 gateways put the precise reason there).
    pub fn detail_code(&self) -> Option<&str> {
        self.details.as_ref()?.get("code")?.as_str()
    }

    fn detail_str(&self, key: &str) -> Option<&str> {
        self.details.as_ref()?.get(key)?.as_str()
    }

    fn detail_u32(&self, key: &str) -> Option<u32> {
        self.details
            .as_ref()?
            .get(key)?
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
    }
}

/// Why the gateway refused our credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRejection {
    /// The gateway token is wrong.
    TokenMismatch,
    /// The gateway wants a token and none is configured.
    TokenMissing,
    /// The device identity or signature was refused (bad signature, clock skew, nonce).
    Device(String),
    /// Anything else the gateway called unauthorized or forbidden.
    Other(String),
}

/// Everything that can go wrong talking to a gateway, classified by what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// No WebSocket could be opened (refused, DNS, TLS, timeout). Retry later.
    #[error("{reason} at {url}")]
    Unreachable {
        /// The gateway URL without its query string.
        url: String,
        /// What failed, e.g. `connection refused`.
        reason: String,
    },
    /// The gateway refused the token or this device. Fix the configuration.
    #[error("{}", auth_wording(.0))]
    AuthRejected(AuthRejection),
    /// This device must be approved on the gateway host first.
    #[error("{}", pairing_wording(.request_id.as_deref()))]
    PairingRequired {
        /// The pairing request to approve, when the gateway sent one.
        request_id: Option<String>,
    },
    /// The gateway speaks a protocol outside [`SUPPORTED_PROTOCOLS`].
    #[error("{}", protocol_wording(*.gateway))]
    ProtocolMismatch {
        /// The protocol the gateway expects, when it said.
        gateway: Option<u32>,
    },
    /// The gateway does not support this method, file or value. Permanent.
    #[error("unsupported by the gateway: {message}")]
    Unsupported {
        /// The gateway's message, e.g. `unsupported file "TOOLS.md"`.
        message: String,
    },
    /// The gateway refused the request itself (bad params, unknown agent, stale hash…).
    /// Permanent for these params; [`GatewayError::is_missing_agent`] and friends tell the
    /// common cases apart.
    #[error("{method} refused by the gateway: {message}")]
    Rejected {
        /// The RPC method.
        method: String,
        /// The gateway's error code.
        code: String,
        /// The gateway's message.
        message: String,
    },
    /// A temporary failure: restart, dropped connection, timeout, gateway busy. Retry.
    #[error("{message}")]
    Transient {
        /// What happened, in words that contain the reason (e.g. "timed out").
        message: String,
    },
}

fn auth_wording(rejection: &AuthRejection) -> String {
    match rejection {
        AuthRejection::TokenMismatch => "token rejected by the gateway".to_owned(),
        AuthRejection::TokenMissing => {
            "the gateway requires a token and none is configured".to_owned()
        }
        AuthRejection::Device(message) => {
            format!("device identity rejected by the gateway: {message}")
        }
        AuthRejection::Other(message) => {
            format!("authentication refused by the gateway: {message}")
        }
    }
}

fn pairing_wording(request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => {
            format!("pairing required: run `openclaw devices approve {id}` on the gateway host")
        }
        None => "pairing required: run `openclaw devices approve --latest` on the gateway host"
            .to_owned(),
    }
}

fn protocol_wording(gateway: Option<u32>) -> String {
    let (lo, hi) = (SUPPORTED_PROTOCOLS.start(), SUPPORTED_PROTOCOLS.end());
    match gateway {
        Some(p) => format!("gateway speaks protocol {p}; this server supports {lo}–{hi}"),
        None => format!("gateway refused protocols {lo}–{hi} (protocol mismatch)"),
    }
}

/// Message fragments that mark a failure as temporary (from the gateway or the transport).
const TRANSIENT_MARKERS: &[&str] = &[
    "connect call failed",
    "connection refused",
    "errno 111",
    "econnrefused",
    "did not receive a valid http response",
    "no route to host",
    "network is unreachable",
    "host is down",
    "name or service not known",
    "received 1012",
    "service restart",
    "http 503",
    "http 502",
    "http 504",
    "temporar",
    "timeout",
    "timed out",
    "connection closed",
    "connection reset",
];

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

impl GatewayError {
    /// Classifies an error frame the gateway answered `method` with.
    pub fn from_gateway(method: &str, shape: &GatewayErrorShape) -> Self {
        let message = shape.message.to_lowercase();
        let detail_code = shape.detail_code().unwrap_or("");
        if detail_code == "PROTOCOL_MISMATCH" || message.contains("protocol mismatch") {
            return Self::ProtocolMismatch {
                gateway: shape.detail_u32("expectedProtocol"),
            };
        }
        if shape.code == "NOT_PAIRED"
            || detail_code == "PAIRING_REQUIRED"
            || message.contains("pairing required")
        {
            return Self::PairingRequired {
                request_id: shape.detail_str("requestId").map(str::to_owned),
            };
        }
        if detail_code == "AUTH_TOKEN_MISMATCH" || message.contains("token mismatch") {
            return Self::AuthRejected(AuthRejection::TokenMismatch);
        }
        if detail_code == "AUTH_TOKEN_MISSING" || message.contains("token missing") {
            return Self::AuthRejected(AuthRejection::TokenMissing);
        }
        if detail_code.starts_with("DEVICE_AUTH")
            || message.starts_with("device ")
            || message.contains("device identity")
        {
            return Self::AuthRejected(AuthRejection::Device(shape.message.clone()));
        }
        if shape.code == "FORBIDDEN"
            || message.contains("unauthorized")
            || message.contains("forbidden")
            || message.contains("missing scope")
        {
            return Self::AuthRejected(AuthRejection::Other(shape.message.clone()));
        }
        if message.contains("unsupported") || message.starts_with("unknown method") {
            return Self::Unsupported {
                message: shape.message.clone(),
            };
        }
        if shape.code == "UNAVAILABLE"
            || shape.code == "AGENT_TIMEOUT"
            || shape.retryable == Some(true)
            || contains_any(&message, TRANSIENT_MARKERS)
        {
            return Self::Transient {
                message: format!("{method}: gateway busy or restarting: {}", shape.message),
            };
        }
        Self::Rejected {
            method: method.to_owned(),
            code: shape.code.clone(),
            message: shape.message.clone(),
        }
    }

    /// Classifies a failure to open the WebSocket to `url` (query string already removed).
    pub fn from_transport(url: &str, error: &tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let reason = match error {
            WsError::Io(io) => io_reason(io),
            WsError::Tls(tls) => format!("TLS failed ({tls})"),
            WsError::Http(response) => {
                format!("HTTP {} instead of a WebSocket upgrade", response.status())
            }
            WsError::Url(url_error) => format!("invalid gateway URL ({url_error})"),
            other => other.to_string(),
        };
        Self::Unreachable {
            url: url.to_owned(),
            reason,
        }
    }

    /// Whether retrying the same call unchanged cannot help (fix config, approve, upgrade).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Unreachable { .. } | Self::Transient { .. })
    }

    /// The gateway's own message, for the marker checks below.
    fn gateway_message(&self) -> Option<String> {
        match self {
            Self::Rejected { message, .. } | Self::Unsupported { message } => {
                Some(message.to_lowercase())
            }
            _ => None,
        }
    }

    /// The agent named in the request does not exist on the gateway.
    pub fn is_missing_agent(&self) -> bool {
        self.gateway_message().is_some_and(|m| {
            contains_any(
                &m,
                &["unknown agent", "no such agent", "agent does not exist"],
            ) || (m.contains("agent") && m.contains("not found"))
        })
    }

    /// `agents.create` found the agent already there (creation is idempotent).
    pub fn is_already_exists(&self) -> bool {
        self.gateway_message()
            .is_some_and(|m| contains_any(&m, &["already", "exist", "duplicate", "conflict"]))
    }

    /// The session named in the request does not exist.
    pub fn is_missing_session(&self) -> bool {
        self.gateway_message().is_some_and(|m| {
            contains_any(
                &m,
                &[
                    "not found",
                    "unknown session",
                    "no such session",
                    "session does not exist",
                ],
            )
        })
    }

    /// The gateway refused a workspace file name.
    pub fn is_unsupported_file(&self) -> bool {
        self.gateway_message()
            .is_some_and(|m| m.contains("unsupported file"))
    }

    /// `config.patch` was sent with a stale `baseHash`: re-read the config and retry.
    pub fn is_stale_config(&self) -> bool {
        self.gateway_message()
            .is_some_and(|m| m.contains("config changed since last load"))
    }

    /// When the gateway refused a config write for its rate limit ("rate limit exceeded
    /// for config.patch; retry after 43s"): how long it asked to wait.
    pub fn rate_limit_retry_after(&self) -> Option<std::time::Duration> {
        let Self::Transient { message } = self else {
            return None;
        };
        let message = message.to_lowercase();
        let (_, rest) = message.split_once("rate limit exceeded")?;
        let seconds = rest
            .split_once("retry after ")
            .and_then(|(_, after)| {
                let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().ok()
            })
            .unwrap_or(60);
        Some(std::time::Duration::from_secs(seconds))
    }

    /// The gateway refused to delete an agent's main session (2026.9.6 and later).
    pub fn is_main_session_delete_refused(&self) -> bool {
        self.gateway_message()
            .is_some_and(|m| m.contains("cannot delete the main session"))
    }
}

fn io_reason(io: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match io.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        ErrorKind::TimedOut => "connection timed out".to_owned(),
        ErrorKind::HostUnreachable => "no route to host".to_owned(),
        ErrorKind::NetworkUnreachable => "network is unreachable".to_owned(),
        _ => {
            if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return match tls {
                    rustls::Error::InvalidCertificate(_) => format!(
                        "TLS failed ({tls}; for a self-signed gateway set allow_insecure_tls)"
                    ),
                    _ => format!("TLS failed ({tls})"),
                };
            }
            let text = io.to_string();
            if text.contains("failed to lookup address") || text.contains("Name or service") {
                "host name not found".to_owned()
            } else if let Some(inner) = io.get_ref() {
                format!("connection failed ({inner})")
            } else {
                format!("connection failed ({text})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(code: &str, message: &str, details: Option<Value>) -> GatewayErrorShape {
        GatewayErrorShape {
            code: code.to_owned(),
            message: message.to_owned(),
            details,
            retryable: None,
            retry_after_ms: None,
        }
    }

    #[test]
    fn token_mismatch_reads_as_token_rejected() {
        let e = GatewayError::from_gateway(
            "connect",
            &shape(
                "INVALID_REQUEST",
                "unauthorized: gateway token mismatch (provide gateway auth token)",
                Some(json!({"code": "AUTH_TOKEN_MISMATCH"})),
            ),
        );
        assert_eq!(e, GatewayError::AuthRejected(AuthRejection::TokenMismatch));
        assert_eq!(e.to_string(), "token rejected by the gateway");
        assert!(e.is_permanent());
    }

    #[test]
    fn pairing_required_names_the_approve_command_with_the_request_id() {
        let e = GatewayError::from_gateway(
            "connect",
            &shape(
                "NOT_PAIRED",
                "pairing required",
                Some(json!({"code": "PAIRING_REQUIRED", "requestId": "req-42"})),
            ),
        );
        assert_eq!(
            e.to_string(),
            "pairing required: run `openclaw devices approve req-42` on the gateway host"
        );
    }

    #[test]
    fn protocol_mismatch_names_the_gateway_protocol_and_our_range() {
        let e = GatewayError::from_gateway(
            "connect",
            &shape(
                "INVALID_REQUEST",
                "protocol mismatch",
                Some(json!({"code": "PROTOCOL_MISMATCH", "expectedProtocol": 5})),
            ),
        );
        assert_eq!(
            e.to_string(),
            "gateway speaks protocol 5; this server supports 3–4"
        );
        assert!(e.is_permanent());
    }

    #[test]
    fn unsupported_file_is_permanent_and_recognised() {
        let e = GatewayError::from_gateway(
            "agents.files.set",
            &shape("INVALID_REQUEST", "unsupported file \"TOOLS.md\"", None),
        );
        assert!(matches!(e, GatewayError::Unsupported { .. }));
        assert!(e.is_unsupported_file() && e.is_permanent());
    }

    #[test]
    fn unavailable_and_restart_messages_are_transient() {
        for s in [
            shape(
                "UNAVAILABLE",
                "gateway starting",
                Some(json!({"reason": "startup-sidecars"})),
            ),
            shape("INVALID_REQUEST", "received 1012 (service restart)", None),
        ] {
            let e = GatewayError::from_gateway("health", &s);
            assert!(matches!(e, GatewayError::Transient { .. }), "{e:?}");
            assert!(!e.is_permanent());
        }
    }

    #[test]
    fn request_refusals_keep_their_message_and_are_told_apart() {
        let missing = GatewayError::from_gateway(
            "agents.update",
            &shape("INVALID_REQUEST", "agent \"mc-1\" not found", None),
        );
        assert!(missing.is_missing_agent() && missing.is_permanent());
        let exists = GatewayError::from_gateway(
            "agents.create",
            &shape("INVALID_REQUEST", "agent \"mc-1\" already exists", None),
        );
        assert!(exists.is_already_exists() && !exists.is_missing_agent());
        let main = GatewayError::from_gateway(
            "sessions.delete",
            &shape(
                "INVALID_REQUEST",
                "Cannot delete the main session (agent:mc-1:main)",
                None,
            ),
        );
        assert!(main.is_main_session_delete_refused() && !main.is_missing_session());
        let stale = GatewayError::from_gateway(
            "config.patch",
            &shape(
                "INVALID_REQUEST",
                "config changed since last load; re-run config.get and retry",
                None,
            ),
        );
        assert!(stale.is_stale_config());
    }

    #[test]
    fn refused_connection_reads_as_unreachable_at_the_url() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = GatewayError::from_transport(
            "ws://127.0.0.1:18789",
            &tokio_tungstenite::tungstenite::Error::Io(io),
        );
        assert_eq!(e.to_string(), "connection refused at ws://127.0.0.1:18789");
        assert!(!e.is_permanent());
    }
}
