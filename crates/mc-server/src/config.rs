//! Server configuration, as resolved by the binary from defaults, file, environment and
//! flags. Tests build it directly with [`ServerConfig::for_data_dir`].

use std::path::PathBuf;
use std::time::Duration;

use mc_domain::token::Secret;
use mc_gateway::{BackoffPolicy, GatewayConfig};

use crate::provision::LifecycleBounds;
use crate::webhooks::DeliverySettings;

/// Default request body limit: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory for the SQLite database and the generated admin token.
    pub data_dir: PathBuf,
    /// Database URL; `None` means `sqlite:<data_dir>/mission-control.db`.
    pub database_url: Option<String>,
    /// The admin bearer token; `None` means load or generate `<data_dir>/admin-token`.
    pub admin_token: Option<Secret>,
    /// The URL agents use to reach this server; `None` derives it from the listener.
    pub base_url: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest delay before a heartbeat's `last_seen_at` is durable.
    pub write_behind_interval: Duration,
    /// How often the liveness engine looks for passed deadlines.
    pub liveness_tick: Duration,
    /// How often the liveness log (heartbeats written behind as one row per batch) is
    /// folded into the agents' rows.
    pub liveness_log_fold_interval: Duration,
    /// How often an idle event stream sends a keep-alive comment.
    pub stream_keep_alive: Duration,
    /// How webhook deliveries are made and retried.
    pub webhook_delivery: DeliverySettings,
    /// Timeouts and reconnect backoff of every gateway connection (URL and token unused).
    pub gateway_connection: GatewayConfig,
    /// Backoff between attempts of a provisioning job that failed transiently.
    pub provision_backoff: BackoffPolicy,
    /// Directory whose `*.j2` files override the compiled-in workspace templates by name.
    pub templates_dir: Option<PathBuf>,
    /// The check-in timeout after each wake and how long a provisioning job may retry.
    pub lifecycle: LifecycleBounds,
}

impl ServerConfig {
    /// Defaults for a data directory.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            admin_token: None,
            base_url: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            write_behind_interval: Duration::from_millis(500),
            liveness_tick: Duration::from_millis(100),
            liveness_log_fold_interval: Duration::from_secs(30),
            stream_keep_alive: Duration::from_secs(15),
            webhook_delivery: DeliverySettings::default(),
            gateway_connection: crate::provision::default_gateway_connection(),
            provision_backoff: BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
                jitter: 0.2,
            },
            templates_dir: None,
            lifecycle: LifecycleBounds::default(),
        }
    }

    /// The database URL in effect.
    pub fn effective_database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join("mission-control.db").display()
            )
        })
    }
}
