//! Agents: validated names, heartbeat settings, reported health and the agent entity.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, ValidationErrors};
use crate::ids::{AgentId, BoardId, EnrollmentTokenId, GatewayId};
use crate::time::Timestamp;

/// Longest accepted agent name, in characters.
pub const MAX_AGENT_NAME_CHARS: usize = 200;

/// An agent's display name: trimmed, non-empty, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AgentName(String);

impl AgentName {
    /// Validates a name given in the request field `field`.
    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationErrors> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationErrors::body(
                field,
                format!("{field} must not be blank"),
            ));
        }
        if trimmed.chars().count() > MAX_AGENT_NAME_CHARS {
            return Err(ValidationErrors::body(
                field,
                format!("{field} must be at most {MAX_AGENT_NAME_CHARS} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ValidationErrors::body(
                field,
                format!("{field} must not contain control characters"),
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// Rebuilds a name read back from storage (already validated when stored).
    pub fn from_stored(name: String) -> Self {
        Self(name)
    }

    /// The name as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive uniqueness key: names are unique per board under this key.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Default heartbeat interval (seed: every 60 seconds).
pub const DEFAULT_INTERVAL_SECONDS: u32 = 60;
/// Default missing tolerance (seed: 120 seconds).
pub const DEFAULT_MISSING_TOLERANCE: u32 = 120;
/// Upper bound for both settings: 30 days.
pub const MAX_HEARTBEAT_SECONDS: u32 = 30 * 24 * 3600;

/// How often an agent heartbeats and how long it may stay silent before it is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatConfig {
    /// Seconds between heartbeats.
    pub interval_seconds: u32,
    /// Seconds of silence after which the agent is offline.
    pub missing_tolerance: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_seconds: DEFAULT_INTERVAL_SECONDS,
            missing_tolerance: DEFAULT_MISSING_TOLERANCE,
        }
    }
}

impl HeartbeatConfig {
    /// Validates a configuration from optional parts. A missing interval is the default
    /// (60 s); a missing tolerance is the larger of the default (120 s) and twice the interval.
    pub fn parse(
        interval_seconds: Option<i64>,
        missing_tolerance: Option<i64>,
    ) -> Result<Self, ValidationErrors> {
        let field = |name: &str| {
            FieldError::new(
                ["body", "heartbeat_config", name],
                String::new(),
                "value_error",
            )
        };
        let check = |name: &str, value: i64| -> Result<u32, ValidationErrors> {
            if value < 1 || value > i64::from(MAX_HEARTBEAT_SECONDS) {
                let mut error = field(name);
                error.message = format!(
                    "heartbeat_config.{name} must be a positive number of seconds, at most {MAX_HEARTBEAT_SECONDS}"
                );
                return Err(error.into());
            }
            Ok(u32::try_from(value).unwrap_or(MAX_HEARTBEAT_SECONDS))
        };
        let interval = match interval_seconds {
            Some(v) => check("interval_seconds", v)?,
            None => DEFAULT_INTERVAL_SECONDS,
        };
        let tolerance = match missing_tolerance {
            Some(v) => check("missing_tolerance", v)?,
            None => DEFAULT_MISSING_TOLERANCE.max(interval.saturating_mul(2)),
        };
        if tolerance < interval {
            let mut error = field("missing_tolerance");
            error.message = format!(
                "heartbeat_config.missing_tolerance ({tolerance}) must be at least interval_seconds ({interval})"
            );
            return Err(error.into());
        }
        Ok(Self {
            interval_seconds: interval,
            missing_tolerance: tolerance.min(MAX_HEARTBEAT_SECONDS),
        })
    }
}

/// The health an agent reports about itself in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportedHealth {
    /// Working normally.
    Healthy,
    /// Running, but impaired (recovering, overloaded).
    Degraded,
    /// Going away on purpose.
    Offline,
}

impl ReportedHealth {
    /// Every accepted value, as listed in error messages.
    pub const ACCEPTED: &'static str = "healthy, degraded, offline (online is accepted as healthy)";

    /// Parses a heartbeat `status`. Blank means "not reported"; `online` (older agents) is
    /// `healthy`.
    pub fn parse(raw: Option<&str>) -> Result<Option<Self>, ValidationErrors> {
        let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match raw.to_ascii_lowercase().as_str() {
            "healthy" | "online" => Ok(Some(Self::Healthy)),
            "degraded" => Ok(Some(Self::Degraded)),
            "offline" => Ok(Some(Self::Offline)),
            _ => Err(ValidationErrors::body(
                "status",
                format!("status must be one of {}; got {raw:?}", Self::ACCEPTED),
            )),
        }
    }

    /// The stored and wire form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Offline => "offline",
        }
    }

    /// Parses the stored form.
    pub fn from_stored(text: &str) -> Option<Self> {
        match text {
            "healthy" => Some(Self::Healthy),
            "degraded" => Some(Self::Degraded),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }
}

/// The status every reader sees, computed by [`crate::liveness::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Created, never heard from.
    Provisioning,
    /// Heartbeating and reporting healthy.
    Healthy,
    /// Heartbeating and reporting degraded.
    Degraded,
    /// Silent past its tolerance, reported offline, or never checked in after its wakes.
    Offline,
    /// An update job is queued or running (upstream's wire value).
    Updating,
    /// A delete job is queued or running (upstream's wire value).
    Deleting,
}

impl AgentStatus {
    /// The wire and stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Offline => "offline",
            Self::Updating => "updating",
            Self::Deleting => "deleting",
        }
    }

    /// Parses the stored form.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Every value, for filters and documentation.
    pub const ALL: [Self; 6] = [
        Self::Provisioning,
        Self::Healthy,
        Self::Degraded,
        Self::Offline,
        Self::Updating,
        Self::Deleting,
    ];

    /// Whether the status comes from a provisioning job in progress (`updating`,
    /// `deleting`) rather than from heartbeats; such statuses are never published as
    /// liveness transitions.
    pub const fn is_lifecycle_overlay(self) -> bool {
        matches!(self, Self::Updating | Self::Deleting)
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Free-form identity attributes (role, emoji, communication style ...), normalised:
/// keys and values trimmed, blanks dropped, lists joined with ", ".
pub type IdentityProfile = BTreeMap<String, String>;

/// Normalises a JSON identity profile; `None` when nothing is left.
pub fn normalize_identity_profile(
    value: &serde_json::Value,
) -> Result<Option<IdentityProfile>, ValidationErrors> {
    use serde_json::Value;
    let object = match value {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        _ => {
            return Err(ValidationErrors::body(
                "identity_profile",
                "identity_profile must be an object of strings",
            ));
        }
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let mut profile = IdentityProfile::new();
    for (key, value) in object {
        let key = key.trim();
        let text = match value {
            Value::Null => continue,
            Value::Array(items) => items
                .iter()
                .filter_map(scalar)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(", "),
            Value::Object(_) => {
                return Err(ValidationErrors::one(FieldError::new(
                    ["body", "identity_profile", key],
                    "identity_profile values must be strings or lists of strings",
                    "value_error",
                )));
            }
            other => scalar(other).unwrap_or_default(),
        };
        if !key.is_empty() && !text.is_empty() {
            profile.insert(key.to_owned(), text);
        }
    }
    Ok((!profile.is_empty()).then_some(profile))
}

/// Normalises an optional template text: blank becomes `None`.
pub fn normalize_template(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty())
}

/// An agent as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Identity.
    pub id: AgentId,
    /// The board it works on; `None` for a gateway's main agent.
    pub board_id: Option<BoardId>,
    /// The gateway it runs on.
    pub gateway_id: GatewayId,
    /// Display name, unique per board (case-insensitively).
    pub name: AgentName,
    /// Leads its board.
    pub is_board_lead: bool,
    /// Created by Mission Control (false for agents found on a gateway).
    pub is_mc_agent: bool,
    /// The agent's id on its gateway, once provisioned.
    pub gateway_agent_id: Option<String>,
    /// Its workspace directory on the gateway host, once provisioned.
    pub workspace_path: Option<String>,
    /// Its main session key on the gateway.
    pub openclaw_session_id: Option<String>,
    /// Heartbeat interval and tolerance.
    pub heartbeat_config: HeartbeatConfig,
    /// Identity attributes.
    pub identity_profile: Option<IdentityProfile>,
    /// Override for the IDENTITY.md template.
    pub identity_template: Option<String>,
    /// Override for the SOUL.md template.
    pub soul_template: Option<String>,
    /// Why the last provisioning attempt failed, in words.
    pub last_provision_error: Option<String>,
    /// The last heartbeat's time.
    pub last_seen_at: Option<Timestamp>,
    /// The health last reported by the agent.
    pub reported_health: Option<ReportedHealth>,
    /// The status last published as a transition (what the engine last announced).
    pub published_status: AgentStatus,
    /// The enrollment token that created the agent, if any.
    pub enrolled_via: Option<EnrollmentTokenId>,
    /// Whether the agent has authenticated with its own token yet.
    pub own_token_used: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change (including heartbeats).
    pub updated_at: Timestamp,
}

impl Agent {
    /// A new Mission Control agent named `name`, never provisioned nor heard from, with the
    /// default heartbeat settings; `board_id` is `None` for a gateway's main agent.
    pub fn new(
        board_id: Option<BoardId>,
        gateway_id: GatewayId,
        name: AgentName,
        now: Timestamp,
    ) -> Self {
        Self {
            id: AgentId::new(),
            board_id,
            gateway_id,
            name,
            is_board_lead: false,
            is_mc_agent: true,
            gateway_agent_id: None,
            workspace_path: None,
            openclaw_session_id: None,
            heartbeat_config: HeartbeatConfig::default(),
            identity_profile: None,
            identity_template: None,
            soul_template: None,
            last_provision_error: None,
            last_seen_at: None,
            reported_health: None,
            published_status: AgentStatus::Provisioning,
            enrolled_via: None,
            own_token_used: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// A gateway's main agent has no board.
    pub fn is_gateway_main(&self) -> bool {
        self.board_id.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_trimmed_and_compared_case_insensitively() {
        let a = AgentName::parse("  Worker Ä ", "name").unwrap();
        let b = AgentName::parse("worker ä", "name").unwrap();
        assert_eq!(a.as_str(), "Worker Ä");
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn blank_names_are_rejected_naming_the_field() {
        let err = AgentName::parse("   ", "name").unwrap_err();
        assert_eq!(err.0[0].loc, vec!["body", "name"]);
    }

    #[test]
    fn online_is_a_synonym_of_healthy_and_blank_is_absent() {
        assert_eq!(
            ReportedHealth::parse(Some("online")).unwrap(),
            Some(ReportedHealth::Healthy)
        );
        assert_eq!(ReportedHealth::parse(Some(" ")).unwrap(), None);
        assert_eq!(ReportedHealth::parse(None).unwrap(), None);
    }

    #[test]
    fn unknown_status_names_the_allowed_values() {
        let err = ReportedHealth::parse(Some("sleepy")).unwrap_err();
        assert!(err.0[0].message.contains("healthy, degraded, offline"));
    }

    #[test]
    fn heartbeat_config_defaults_follow_the_seed() {
        assert_eq!(
            HeartbeatConfig::parse(None, None).unwrap(),
            HeartbeatConfig {
                interval_seconds: 60,
                missing_tolerance: 120
            }
        );
        assert_eq!(
            HeartbeatConfig::parse(Some(300), None)
                .unwrap()
                .missing_tolerance,
            600
        );
    }

    #[test]
    fn tolerance_below_interval_or_non_positive_values_are_rejected() {
        assert!(HeartbeatConfig::parse(Some(60), Some(30)).is_err());
        assert!(HeartbeatConfig::parse(Some(0), None).is_err());
        assert!(HeartbeatConfig::parse(Some(10), Some(-1)).is_err());
    }

    #[test]
    fn identity_profiles_are_normalised() {
        let profile = normalize_identity_profile(&json!({
            " role ": " Lead ", "skills": ["a", " ", "b"], "empty": "  ", "gone": null
        }))
        .unwrap()
        .unwrap();
        assert_eq!(profile["role"], "Lead");
        assert_eq!(profile["skills"], "a, b");
        assert!(!profile.contains_key("empty"));
        assert_eq!(normalize_identity_profile(&json!({"x": ""})).unwrap(), None);
        assert!(normalize_identity_profile(&json!([1])).is_err());
    }
}
