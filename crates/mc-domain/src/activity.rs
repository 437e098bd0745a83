//! The activity log: one durable, ordered record per thing that happened. Ids increase
//! monotonically; they are the resume point of event streams.

use serde_json::Value;

use crate::agent::AgentStatus;
use crate::ids::{AgentId, BoardId};
use crate::time::Timestamp;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// An agent was created.
    AgentCreated,
    /// An agent's settings changed.
    AgentUpdated,
    /// An agent was deleted.
    AgentDeleted,
    /// An agent got a new token; the old one stopped working.
    AgentTokenRotated,
    /// An agent's computed status changed.
    AgentStatusChanged(AgentStatus),
}

impl EventType {
    /// Every event type, in a stable order.
    pub const ALL: [Self; 8] = [
        Self::AgentCreated,
        Self::AgentUpdated,
        Self::AgentDeleted,
        Self::AgentTokenRotated,
        Self::AgentStatusChanged(AgentStatus::Provisioning),
        Self::AgentStatusChanged(AgentStatus::Healthy),
        Self::AgentStatusChanged(AgentStatus::Degraded),
        Self::AgentStatusChanged(AgentStatus::Offline),
    ];

    /// The event type with wire form `name`, if there is one.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The wire form, e.g. `agent.offline`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgentCreated => "agent.created",
            Self::AgentUpdated => "agent.updated",
            Self::AgentDeleted => "agent.deleted",
            Self::AgentTokenRotated => "agent.token_rotated",
            Self::AgentStatusChanged(AgentStatus::Provisioning) => "agent.provisioning",
            Self::AgentStatusChanged(AgentStatus::Healthy) => "agent.healthy",
            Self::AgentStatusChanged(AgentStatus::Degraded) => "agent.degraded",
            Self::AgentStatusChanged(AgentStatus::Offline) => "agent.offline",
            // Job overlays are never published as transitions (see `AgentStatus`); the
            // names exist only so that the mapping is total.
            Self::AgentStatusChanged(AgentStatus::Updating) => "agent.updating",
            Self::AgentStatusChanged(AgentStatus::Deleting) => "agent.deleting",
        }
    }
}

/// An event about to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    /// What happened.
    pub event_type: EventType,
    /// One English sentence, ending with a period.
    pub message: String,
    /// The agent it is about.
    pub agent_id: Option<AgentId>,
    /// The board it belongs to.
    pub board_id: Option<BoardId>,
    /// Structured details (e.g. `{"from": "healthy", "to": "offline"}`).
    pub data: Option<Value>,
    /// When it happened.
    pub created_at: Timestamp,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityEvent {
    /// Monotonically increasing id.
    pub id: i64,
    /// Wire form of the event type.
    pub event_type: String,
    /// The sentence.
    pub message: String,
    /// The agent it is about.
    pub agent_id: Option<AgentId>,
    /// The board it belongs to.
    pub board_id: Option<BoardId>,
    /// Structured details.
    pub data: Option<Value>,
    /// When it happened.
    pub created_at: Timestamp,
}

/// The event and sentence for a liveness transition of the agent `name`.
pub fn status_transition(
    name: &str,
    from: AgentStatus,
    to: AgentStatus,
    silent_seconds: Option<u32>,
) -> (EventType, String) {
    let message = match (from, to) {
        (_, AgentStatus::Offline) => match silent_seconds {
            Some(s) => format!("{name} went offline: no heartbeat for more than {s} s."),
            None => format!("{name} reported offline."),
        },
        (AgentStatus::Offline, _) => format!("{name} is back: {}.", to.as_str()),
        (AgentStatus::Provisioning, _) => {
            format!("{name} sent its first heartbeat: {}.", to.as_str())
        }
        _ => format!("{name} is now {} (was {}).", to.as_str(), from.as_str()),
    };
    (EventType::AgentStatusChanged(to), message)
}
