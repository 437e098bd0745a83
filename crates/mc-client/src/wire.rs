//! The shapes exchanged with `/api/v1`, as the client sees them. Answers ignore fields
//! they do not name, so a newer server stays readable; secrets arrive as [`Secret`].

use std::fmt;

use mc_domain::token::Secret;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// The health an agent reports in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working normally.
    Healthy,
    /// Running, but impaired.
    Degraded,
    /// Going away on purpose (the last heartbeat before stopping).
    Offline,
}

impl HealthStatus {
    /// The wire name: `healthy`, `degraded` or `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Offline => "offline",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatConfig {
    /// Seconds between heartbeats: the agent must not send more often.
    pub interval_seconds: u32,
    /// Seconds of silence after which the server declares the agent offline.
    pub missing_tolerance: u32,
}

/// An agent as every endpoint returns it (the seed's AgentRead).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentRead {
    /// Identity.
    pub id: Uuid,
    /// The gateway it runs on.
    pub gateway_id: Uuid,
    /// Its board; `None` for a gateway's main agent.
    pub board_id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// Computed status: `provisioning`, `healthy`, `degraded`, `offline`, ...
    pub status: String,
    /// The last heartbeat, RFC 3339.
    pub last_seen_at: Option<String>,
    /// Its heartbeat settings.
    pub heartbeat_config: HeartbeatConfig,
}

/// The answer to an enrollment heartbeat: the agent, and its own token when the server
/// minted one (sent once, in the `X-Agent-Token` response header).
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The agent as created (or found).
    pub agent: AgentRead,
    /// The agent's own token, if the answer carried one.
    pub token: Option<Secret>,
}

/// One page of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// How many items match in all.
    pub total: u64,
}

/// A gateway to create (admin).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayCreate {
    /// Display name.
    pub name: String,
    /// `ws://` or `wss://` URL; empty for an unmanaged gateway whose agents only heartbeat.
    pub url: String,
}

/// A gateway as read.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayRead {
    /// Identity.
    pub id: Uuid,
    /// Display name.
    pub name: String,
}

/// A board to create (admin).
#[derive(Debug, Clone, Serialize)]
pub struct BoardCreate {
    /// Display name.
    pub name: String,
    /// URL-friendly unique name.
    pub slug: String,
    /// What the board is for.
    pub description: String,
    /// The gateway its agents run on.
    pub gateway_id: Uuid,
    /// Most agents the board may hold.
    pub max_agents: u32,
}

/// A board as read.
#[derive(Debug, Clone, Deserialize)]
pub struct BoardRead {
    /// Identity.
    pub id: Uuid,
    /// Display name.
    pub name: String,
}

/// An agent to create (admin).
#[derive(Debug, Clone, Serialize)]
pub struct AgentCreate {
    /// Display name, unique per board.
    pub name: String,
    /// The board it joins.
    pub board_id: Uuid,
    /// Heartbeat settings; the server's defaults when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_config: Option<HeartbeatConfig>,
}

/// Terms of an enrollment token to issue (admin).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnrollmentTokenCreate {
    /// Lifetime in seconds; the server's default (one day) when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// How many agents it may create; unlimited when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
}

/// An enrollment token as read; `token` only in the answer that created it.
#[derive(Debug, Clone, Deserialize)]
pub struct EnrollmentTokenRead {
    /// Identity.
    pub id: Uuid,
    /// The board it enrolls agents on.
    pub board_id: Uuid,
    /// The `mce_...` secret, shown once.
    #[serde(default, deserialize_with = "optional_secret")]
    pub token: Option<Secret>,
    /// How many agents it has created.
    pub uses: u32,
    /// How many it may create.
    pub max_uses: Option<u32>,
}

fn optional_secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.map(Secret::new))
}

/// The answer of `POST /agents/{id}/token`.
#[derive(Deserialize)]
pub(crate) struct RotatedToken {
    #[serde(deserialize_with = "secret")]
    pub token: Secret,
}

fn secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
    String::deserialize(deserializer).map(Secret::new)
}

/// Body of the agent-scoped heartbeat.
#[derive(Serialize)]
pub(crate) struct StatusBody {
    pub status: HealthStatus,
}

/// Body of the heartbeat by name (enrollment).
#[derive(Serialize)]
pub(crate) struct HeartbeatByName<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub board_id: Option<Uuid>,
    pub status: HealthStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_read_with_extra_fields_parses() {
        let text = r#"{"id":"c91361ef-6d85-439c-82e1-8f388a302e6a","gateway_id":"55cc268a-4b45-400f-accf-201e025232ac",
            "board_id":null,"name":"Ops","status":"healthy","last_seen_at":"2026-03-05T11:30:00Z",
            "is_mc_agent":true,"heartbeat_config":{"interval_seconds":60,"missing_tolerance":120}}"#;
        let agent: AgentRead = serde_json::from_str(text).unwrap();
        assert_eq!(agent.name, "Ops");
        assert_eq!(agent.board_id, None);
        assert_eq!(agent.heartbeat_config.interval_seconds, 60);
    }

    #[test]
    fn statuses_travel_in_lowercase() {
        let body = serde_json::to_string(&StatusBody {
            status: HealthStatus::Degraded,
        })
        .unwrap();
        assert_eq!(body, r#"{"status":"degraded"}"#);
    }
}
