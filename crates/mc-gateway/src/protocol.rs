//! Wire frames of the OpenClaw gateway protocol (v3 and v4 share these shapes) and the
//! constants of the connect handshake. Shared by the client and the fake gateway, so both
//! sides agree on one definition.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::GatewayErrorShape;

/// `client.id`: the gateway accepts only ids from a closed list; this is the backend one.
pub const CLIENT_ID: &str = "gateway-client";
/// `client.mode` for a backend service.
pub const CLIENT_MODE: &str = "backend";
/// `client.version` we report.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The role this server connects with.
pub const ROLE: &str = "operator";
/// The operator scopes, in the exact order sent and signed.
pub const OPERATOR_SCOPES: [&str; 4] = [
    "operator.read",
    "operator.admin",
    "operator.approvals",
    "operator.pairing",
];
/// The event the gateway sends first, carrying the nonce to sign.
pub const CHALLENGE_EVENT: &str = "connect.challenge";

/// One frame on the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Frame {
    /// A request.
    #[serde(rename = "req")]
    Request(RequestFrame),
    /// A response to a request with the same id.
    #[serde(rename = "res")]
    Response(ResponseFrame),
    /// An unsolicited event.
    #[serde(rename = "event")]
    Event(EventFrame),
}

/// `{"type":"req","id","method","params"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Correlation id, echoed in the response.
    pub id: String,
    /// The RPC method.
    pub method: String,
    /// The parameters (`{}` when none).
    #[serde(default)]
    pub params: Value,
}

/// `{"type":"res","id","ok","payload"|"error"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request id this answers.
    pub id: String,
    /// Success or failure.
    pub ok: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<GatewayErrorShape>,
}

/// `{"type":"event","event","payload","seq"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The event name.
    pub event: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
    /// Sequence number, when the gateway numbers events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `client` in the connect params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// One of the gateway's allowed client ids.
    pub id: String,
    /// Our version.
    pub version: String,
    /// The OS name, lowercased.
    pub platform: String,
    /// One of the gateway's allowed modes.
    pub mode: String,
}

/// `auth` in the connect params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectAuth {
    /// The gateway's shared token.
    pub token: String,
}

/// The `connect` request params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectParams {
    /// Lowest protocol we speak.
    pub min_protocol: u32,
    /// Highest protocol we speak.
    pub max_protocol: u32,
    /// Always `operator`.
    pub role: String,
    /// The operator scopes, in signed order.
    pub scopes: Vec<String>,
    /// Who we are.
    pub client: ClientInfo,
    /// The signed device proof (the wire shape of [`crate::identity::DeviceProof`]).
    pub device: Value,
    /// The token, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectAuth>,
}

/// `server` in hello-ok.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// The gateway's CalVer version, e.g. `2026.4.2`.
    #[serde(default)]
    pub version: Option<String>,
    /// The gateway's id for this connection.
    #[serde(default)]
    pub conn_id: Option<String>,
}

/// The payload of a successful `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The protocol the gateway chose from our range.
    pub protocol: u32,
    /// Version information.
    #[serde(default)]
    pub server: Option<ServerInfo>,
    /// Methods and events the gateway offers.
    #[serde(default)]
    pub features: Option<Value>,
    /// Pairing result: 2026.4.2 issues a `deviceToken` here.
    #[serde(default)]
    pub auth: Option<Value>,
    /// Limits (payload sizes, tick interval).
    #[serde(default)]
    pub policy: Option<Value>,
}

/// The OS name as the gateway expects it in `client.platform`.
pub fn platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}
