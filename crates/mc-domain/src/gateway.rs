//! Gateways: where agents run. A gateway with an empty URL is *unmanaged*: Mission
//! Control never connects to it; its agents run anywhere and only heartbeat.

use crate::error::ValidationErrors;
use crate::ids::{GatewayId, OrganizationId};
use crate::time::Timestamp;
use crate::token::Secret;

/// A gateway's WebSocket URL, or none for an unmanaged gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayUrl(Option<String>);

impl GatewayUrl {
    /// Validates the body field `url`: empty (unmanaged) or a `ws://` / `wss://` URL with a host.
    pub fn parse(raw: &str) -> Result<Self, ValidationErrors> {
        let url = raw.trim();
        if url.is_empty() {
            return Ok(Self(None));
        }
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
        match host {
            Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => {
                Ok(Self(Some(url.to_owned())))
            }
            _ => Err(ValidationErrors::body(
                "url",
                "url must be empty (unmanaged gateway) or a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:18789",
            )),
        }
    }

    /// Rebuilds a URL read back from storage.
    pub fn from_stored(url: String) -> Self {
        Self((!url.is_empty()).then_some(url))
    }

    /// The URL, or `None` when unmanaged.
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The stored form: the URL or the empty string.
    pub fn stored(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    /// Whether Mission Control manages agents on this gateway.
    pub fn is_managed(&self) -> bool {
        self.0.is_some()
    }
}

/// A gateway as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Identity.
    pub id: GatewayId,
    /// Owning organisation.
    pub organization_id: OrganizationId,
    /// Display name.
    pub name: String,
    /// Where to reach it, if managed.
    pub url: GatewayUrl,
    /// The gateway's auth token (write-only on the API).
    pub token: Option<Secret>,
    /// The directory under which agent workspaces live on the gateway host.
    pub workspace_root: String,
    /// Accept self-signed TLS certificates.
    pub allow_insecure_tls: bool,
    /// Connect without device pairing.
    pub disable_device_pairing: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_url_means_unmanaged() {
        assert!(!GatewayUrl::parse("  ").unwrap().is_managed());
        assert!(
            GatewayUrl::parse("ws://127.0.0.1:18789")
                .unwrap()
                .is_managed()
        );
        assert!(
            GatewayUrl::parse("wss://gw.example/path")
                .unwrap()
                .is_managed()
        );
    }

    #[test]
    fn other_schemes_and_missing_hosts_are_rejected() {
        for bad in ["http://x", "ws://", "ws:///x", "x", "wss:// x"] {
            assert!(GatewayUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
