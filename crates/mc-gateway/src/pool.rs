//! The set of live gateway connections the server holds: one [`GatewayHandle`] per managed
//! gateway, all presenting the same device identity.

use std::collections::HashMap;
use std::sync::Arc;

use mc_domain::ids::GatewayId;
use parking_lot::Mutex;

use crate::connection::{GatewayConfig, GatewayHandle, GatewayStatus};
use crate::identity::DeviceIdentity;

/// One connection per managed gateway, keyed by gateway id.
pub struct GatewayPool {
    identity: Arc<DeviceIdentity>,
    template: GatewayConfig,
    gateways: Mutex<HashMap<GatewayId, (GatewayConfig, GatewayHandle)>>,
}

impl std::fmt::Debug for GatewayPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPool")
            .field("gateways", &self.gateways.lock().len())
            .finish_non_exhaustive()
    }
}

impl GatewayPool {
    /// An empty pool. `defaults` supplies the timeouts and backoff of every connection; its
    /// URL and token are ignored.
    pub fn new(identity: Arc<DeviceIdentity>, defaults: GatewayConfig) -> Self {
        Self {
            identity,
            template: defaults,
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to gateway `id`, started (or restarted, when the URL, token or TLS
    /// setting changed) as needed.
    pub fn ensure(
        &self,
        id: GatewayId,
        url: &str,
        token: Option<mc_domain::token::Secret>,
        allow_insecure_tls: bool,
    ) -> GatewayHandle {
        let config = GatewayConfig {
            url: url.to_owned(),
            token,
            allow_insecure_tls,
            ..self.template.clone()
        };
        let mut gateways = self.gateways.lock();
        if let Some((current, handle)) = gateways.get(&id)
            && *current == config
        {
            return handle.clone();
        }
        let handle = GatewayHandle::connect(config.clone(), self.identity.clone());
        gateways.insert(id, (config, handle.clone()));
        handle
    }

    /// The connection to gateway `id`, if one is running.
    pub fn get(&self, id: GatewayId) -> Option<GatewayHandle> {
        self.gateways.lock().get(&id).map(|(_, h)| h.clone())
    }

    /// The status of gateway `id`, if it is managed by this pool.
    pub fn status(&self, id: GatewayId) -> Option<GatewayStatus> {
        self.get(id).map(|h| h.status())
    }

    /// Stops the connection to gateway `id` (once no caller holds its handle).
    pub fn remove(&self, id: GatewayId) {
        self.gateways.lock().remove(&id);
    }

    /// Every managed gateway's status.
    pub fn statuses(&self) -> Vec<(GatewayId, GatewayStatus)> {
        self.gateways
            .lock()
            .iter()
            .map(|(id, (_, h))| (*id, h.status()))
            .collect()
    }

    /// The device identity presented to every gateway.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }
}
