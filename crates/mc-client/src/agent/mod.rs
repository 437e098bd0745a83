//! The agent side: what runs on an agent host to keep Mission Control informed.
//!
//! - [`credentials`]: the base URL and token, from flags, the environment or the
//!   agent's workspace; where an enrolled agent keeps its own token.
//! - [`schedule`]: when the next heartbeat goes out (the agent's configured interval
//!   with jitter, never sooner) and how failures back off (capped exponential, jittered).
//! - [`health`]: what the agent reports: a fixed status or a status command's exit code.
//! - [`heartbeater`]: one heartbeat, enrolling first when the agent has no token yet.
//! - [`run`]: the loop, until a shutdown signal, which it answers with a final `offline`.

pub mod credentials;
pub mod health;
pub mod heartbeater;
pub mod run;
pub mod schedule;

pub use credentials::{Credential, CredentialOptions, Credentials, CredentialsError, Origin};
pub use health::{HealthReport, HealthSource, StatusCommand};
pub use heartbeater::{BeatError, BeatOutcome, Heartbeater};
pub use run::{EventLog, LoopEvent, LoopSettings, Stopped, run};
pub use schedule::Backoff;
