//! The Mission Control domain: identifiers, validated values, entities and the rules
//! that decide an agent's status. Pure: no I/O, no clocks (callers pass `now`), so every
//! rule here is unit- and property-tested in isolation.

pub mod activity;
pub mod agent;
pub mod board;
pub mod credentials;
pub mod enrollment;
pub mod error;
pub mod gateway;
pub mod ids;
pub mod liveness;
pub mod page;
pub mod time;
pub mod token;
pub mod uptime;
pub mod webhook;

pub use error::{FieldError, ValidationErrors};
pub use time::Timestamp;
