//! Shared application state handed to every handler.

use std::sync::Arc;
use std::time::Duration;

use mc_domain::ids::OrganizationId;
use mc_domain::token::Secret;
use mc_gateway::GatewayPool;
use mc_store::Store;
use tokio::sync::watch;

use crate::liveness::{Engine, Registry};
use crate::metrics::Metrics;
use crate::provision::Provisioner;

/// Everything handlers share.
pub struct AppState {
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Every agent in memory (the heartbeat hot path).
    pub registry: Arc<Registry>,
    /// Write-behind, deadlines and the event bus.
    pub engine: Arc<Engine>,
    /// The admin bearer token.
    pub admin_token: Secret,
    /// The default organisation (owner of every gateway and board).
    pub organization_id: OrganizationId,
    /// The URL agents use to reach this server.
    pub base_url: String,
    /// Turns true when the server starts shutting down (event streams end then).
    pub shutdown: watch::Sender<bool>,
    /// How often an idle event stream sends a keep-alive comment.
    pub stream_keep_alive: Duration,
    /// Request and stream counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// One connection per managed gateway.
    pub gateways: Arc<GatewayPool>,
    /// Provisioning's in-memory parts (tokens waiting for their job, the runner's wake-up).
    pub provisioner: Arc<Provisioner>,
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;
