//! OpenClaw gateway client.
//!
//! - [`identity`]: the Ed25519 device identity, created once in the data directory.
//! - [`connection`]: one long-lived, self-reconnecting WebSocket per gateway
//!   ([`GatewayHandle`]) and its [`GatewayStatus`].
//! - `config_writer`: batches many agents' config entries into one `config.patch`
//!   ([`GatewayHandle::write_agent_config`]).
//! - [`rpc`]: typed calls (`health`, `config.*`, `agents.*`, `sessions.*`, `chat.send`).
//! - [`generation`]: every difference between protocol 3 and protocol 4 gateways.
//! - [`error`]: [`GatewayError`], classified by what the operator should do.
//! - [`pool`]: one handle per managed gateway, for the server.
//! - `testing` (feature `test-support`): a protocol-faithful fake gateway and a launcher for
//!   real OpenClaw gateways.

mod config_writer;
pub mod connection;
pub mod error;
pub mod generation;
pub mod identity;
pub mod pool;
pub mod protocol;
pub mod rpc;
mod tls;

#[cfg(feature = "test-support")]
pub mod testing;

pub use connection::{BackoffPolicy, GatewayConfig, GatewayHandle, GatewayStatus};
pub use error::{AuthRejection, GatewayError};
pub use generation::{AgentConfigEntry, GatewayGeneration, HeartbeatSettings};
pub use identity::DeviceIdentity;
pub use pool::GatewayPool;
