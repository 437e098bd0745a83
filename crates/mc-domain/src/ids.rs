//! Typed identifiers. Each entity has its own id type so an agent id can never be passed
//! where a board id is expected. New ids are UUIDv7: time-ordered keys index better.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! entity_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }
    };
}

entity_id!(
    /// An organisation: the owner of gateways and boards.
    OrganizationId
);
entity_id!(
    /// A human user (the local admin).
    UserId
);
entity_id!(
    /// An OpenClaw gateway registration.
    GatewayId
);
entity_id!(
    /// A board: the unit agents and their work are grouped by.
    BoardId
);
entity_id!(
    /// An agent.
    AgentId
);
entity_id!(
    /// A board-scoped enrollment token.
    EnrollmentTokenId
);
entity_id!(
    /// An outbound webhook subscription.
    WebhookId
);
