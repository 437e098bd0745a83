//! Typed HTTP client for Mission Control's `/api/v1`, shared by the `mission-control`
//! CLI, the agent-side heartbeat loop, the tests and the benchmarks.
//!
//! - [`Client`]: one method per endpoint, typed requests and answers, errors as
//!   [`ClientError`] classified once into transient and permanent failures.
//! - [`agent`]: what runs on an agent host: credentials from the agent's workspace,
//!   enrollment, the heartbeat schedule (interval with jitter, capped exponential
//!   backoff) and the loop that keeps Mission Control informed until it is stopped.

pub mod agent;
mod client;
mod error;
mod wire;

pub use client::Client;
pub use error::{ClientError, Failure};
pub use mc_domain::token::Secret;
pub use wire::{
    AgentCreate, AgentRead, BoardCreate, BoardRead, Enrolled, EnrollmentTokenCreate,
    EnrollmentTokenRead, GatewayCreate, GatewayRead, HealthStatus, HeartbeatConfig, Page,
};
