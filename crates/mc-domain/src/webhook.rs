//! Outbound webhooks: subscriptions to activity events, deliveries signed with the
//! subscription's secret, retried with capped exponential backoff, logged per subscription.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::activity::EventType;
use crate::error::ValidationErrors;
use crate::ids::{OrganizationId, WebhookId};
use crate::time::Timestamp;
use crate::token::Secret;

/// Shortest accepted signing secret.
pub const MIN_SECRET_CHARS: usize = 16;

/// Longest accepted URL.
const MAX_URL_CHARS: usize = 2000;

/// Where deliveries are posted: an absolute `http://` or `https://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Validates the body field `url`.
    pub fn parse(raw: &str) -> Result<Self, ValidationErrors> {
        let url = raw.trim();
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        match host {
            Some(h)
                if !h.is_empty()
                    && !url.contains(char::is_whitespace)
                    && url.len() <= MAX_URL_CHARS =>
            {
                Ok(Self(url.to_owned()))
            }
            _ => Err(ValidationErrors::body(
                "url",
                "url must be an http:// or https:// URL with a host, e.g. https://hooks.example.com/mission-control",
            )),
        }
    }

    /// Rebuilds a URL read back from storage.
    pub fn from_stored(url: String) -> Self {
        Self(url)
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The event types a subscription wants; empty means every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSelection(BTreeSet<&'static str>);

impl EventSelection {
    /// Validates the body field `event_types` (each a known event type).
    pub fn parse(names: &[String]) -> Result<Self, ValidationErrors> {
        let mut selected = BTreeSet::new();
        for name in names {
            match EventType::from_wire(name.trim()) {
                Some(event_type) => {
                    selected.insert(event_type.as_str());
                }
                None => {
                    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                    return Err(ValidationErrors::body(
                        "event_types",
                        format!(
                            "unknown event type {name:?}; known types: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Self(selected))
    }

    /// Rebuilds a selection from its stored form, ignoring types no longer known.
    pub fn from_stored(stored: &str) -> Self {
        Self(
            stored
                .split(',')
                .filter_map(EventType::from_wire)
                .map(EventType::as_str)
                .collect(),
        )
    }

    /// The stored form: `,a,b,` (so `,type,` matches by substring), or empty for every event.
    pub fn stored(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let names: Vec<&str> = self.0.iter().copied().collect();
        format!(",{},", names.join(","))
    }

    /// Whether an event of `event_type` is wanted.
    pub fn wants(&self, event_type: &str) -> bool {
        self.0.is_empty() || self.0.contains(event_type)
    }

    /// The selected types (empty: every event).
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().copied()
    }
}

/// Validates the body field `secret`.
pub fn parse_secret(raw: &str) -> Result<Secret, ValidationErrors> {
    let secret = raw.trim();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(ValidationErrors::body(
            "secret",
            format!("secret must be at least {MIN_SECRET_CHARS} characters"),
        ));
    }
    Ok(Secret::new(secret))
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// Identity.
    pub id: WebhookId,
    /// Owning organisation.
    pub organization_id: OrganizationId,
    /// Where deliveries go.
    pub url: WebhookUrl,
    /// Which events it wants.
    pub event_types: EventSelection,
    /// The HMAC key (write-only on the API).
    pub secret: Secret,
    /// Whether new events are delivered.
    pub enabled: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more will be made.
    Failed,
}

impl DeliveryState {
    /// The wire and stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// One event's delivery to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Identity (increasing).
    pub id: i64,
    /// The subscription.
    pub webhook_id: WebhookId,
    /// The activity event delivered.
    pub event_id: i64,
    /// Its type.
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The receiver's last HTTP status, if it answered.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed, in words.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
}

/// How failed deliveries are retried: exponential backoff from `first` doubling up to
/// `cap`, with jitter, for at most `max_attempts` attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub first: Duration,
    /// Longest delay between attempts.
    pub cap: Duration,
    /// Attempts before a delivery is given up.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            cap: Duration::from_secs(600),
            max_attempts: 12,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1` after `attempts` failures, or `None` when
    /// the delivery is given up. `jitter` in `[0, 1)` spreads retries by up to a quarter.
    pub fn next_delay(&self, attempts: u32, jitter: f64) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let exponent = attempts.saturating_sub(1).min(30);
        let base = self.first.saturating_mul(1 << exponent).min(self.cap);
        let spread = base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25);
        Some((base + spread).min(self.cap))
    }
}

/// Why an attempt failed, in words an operator can act on.
pub fn describe_failure(status: Option<u16>, transport_error: Option<&str>) -> String {
    match (status, transport_error) {
        (Some(code), _) => format!("the receiver answered HTTP {code}"),
        (None, Some(error)) => format!("could not deliver: {error}"),
        (None, None) => "could not deliver".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert!(WebhookUrl::parse("https://hooks.example.com/x").is_ok());
        assert!(WebhookUrl::parse(" http://127.0.0.1:9000 ").is_ok());
        for bad in ["", "ftp://x", "https://", "hooks.example.com", "http://a b"] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_selection_round_trips_and_empty_means_everything() {
        let selection =
            EventSelection::parse(&["agent.offline".into(), "agent.healthy".into()]).unwrap();
        assert_eq!(selection.stored(), ",agent.healthy,agent.offline,");
        assert_eq!(EventSelection::from_stored(&selection.stored()), selection);
        assert!(selection.wants("agent.offline"));
        assert!(!selection.wants("agent.created"));
        let everything = EventSelection::parse(&[]).unwrap();
        assert_eq!(everything.stored(), "");
        assert!(everything.wants("agent.created"));
        assert!(EventSelection::parse(&["agent.exploded".into()]).is_err());
    }

    #[test]
    fn secrets_have_a_minimum_length() {
        assert!(parse_secret("short").is_err());
        assert!(parse_secret("0123456789abcdef").is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let policy = RetryPolicy {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(10),
            max_attempts: 6,
        };
        let delays: Vec<Option<Duration>> = (1..=6).map(|n| policy.next_delay(n, 0.0)).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 10]
                .map(|s| Some(Duration::from_secs(s)))
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        let jittered = policy.next_delay(2, 0.99).unwrap();
        assert!(jittered > Duration::from_secs(2) && jittered <= Duration::from_millis(2500));
        assert_eq!(
            policy.next_delay(5, 0.99),
            Some(Duration::from_secs(10)),
            "never above the cap"
        );
    }
}
