//! The webhook delivery worker: claims due deliveries from the store's queue, posts each
//! event signed with its subscription's secret, records the outcome and schedules
//! retries with capped exponential backoff.
//!
//! Deliveries are queued by the store in the transaction that records the event, so an
//! acknowledged event is never lost to a crash; claims are leases, so a delivery whose
//! worker died is attempted again once the lease runs out.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_domain::webhook::{DeliveryState, RetryPolicy, describe_failure};
use mc_store::{DeliveryAttempt, DueDelivery, Store};
use sha2::Sha256;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::v1::activity::ActivityEventRead;
use crate::metrics::{JobOutcome, Metrics};

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-MC-Signature";

/// Deliveries claimed (and attempted concurrently) per round.
const CLAIM_BATCH: u32 = 32;

/// The longest the worker sleeps without looking at the queue.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// How long the worker waits after the database failed before it tries again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How deliveries are made.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// Backoff between attempts and when to give up.
    pub retry: RetryPolicy,
    /// Longest wait for a receiver's answer.
    pub timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The worker's parts.
struct Worker {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    settings: DeliverySettings,
    metrics: Arc<Metrics>,
}

/// Starts the worker; it stops when `stop` turns true.
pub fn start(
    store: Arc<dyn Store>,
    settings: DeliverySettings,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mission-control/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds with static settings");
    let worker = Worker {
        store,
        client,
        settings,
        metrics,
    };
    tokio::spawn(async move {
        let mut feed = worker.store.subscribe_activity();
        loop {
            let pause = match worker.deliver_due().await {
                Ok(pause) => pause,
                Err(error) => {
                    tracing::warn!(%error, "webhook deliveries: the database failed; retrying");
                    STORE_RETRY
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = feed.recv() => {
                    // Coalesce a burst of events into one look at the queue.
                    while !matches!(feed.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
                }
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
        }
    })
}

impl Worker {
    /// Attempts every delivery due now; returns how long to wait for the next one.
    async fn deliver_due(&self) -> Result<Duration, mc_store::StoreError> {
        loop {
            let now = Timestamp::now();
            match self.store.next_delivery_due().await? {
                None => return Ok(MAX_IDLE),
                Some(due) if due > now => {
                    let wait = u64::try_from(due.as_millis() - now.as_millis()).unwrap_or(0);
                    return Ok(Duration::from_millis(wait).min(MAX_IDLE));
                }
                Some(_) => {}
            }
            let lease = self.settings.timeout * 2 + Duration::from_secs(5);
            let lease_until = now.plus_millis(millis(lease));
            let claimed = self
                .store
                .claim_due_deliveries(now, lease_until, CLAIM_BATCH)
                .await?;
            if claimed.is_empty() {
                // Due but claimed by another worker: look again when its lease ends.
                return Ok(Duration::from_millis(200));
            }
            let attempts = claimed.into_iter().map(|due| self.attempt(due));
            for attempt in futures::future::join_all(attempts).await {
                self.store.record_delivery_attempt(&attempt).await?;
                self.metrics.webhooks.count(match attempt.state {
                    DeliveryState::Delivered => JobOutcome::Done,
                    DeliveryState::Pending => JobOutcome::Retrying,
                    DeliveryState::Failed => JobOutcome::Failed,
                });
            }
        }
    }

    /// Posts one delivery and decides what happens next.
    async fn attempt(&self, due: DueDelivery) -> DeliveryAttempt {
        let body =
            serde_json::to_vec(&ActivityEventRead::from(due.event.clone())).unwrap_or_default();
        let response = self
            .client
            .post(due.url.as_str())
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&due.secret, &body))
            .header("X-MC-Event", &due.event.event_type)
            .header("X-MC-Event-Id", due.event.id.to_string())
            .header("X-MC-Delivery", due.delivery.id.to_string())
            .body(body)
            .send()
            .await;
        let attempted_at = Timestamp::now();
        let (status_code, error) = match response {
            Ok(response) if response.status().is_success() => {
                return DeliveryAttempt {
                    delivery_id: due.delivery.id,
                    attempted_at,
                    state: DeliveryState::Delivered,
                    status_code: Some(response.status().as_u16()),
                    error: None,
                    next_attempt_at: None,
                };
            }
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(error) => (None, Some(transport_failure(&error, self.settings.timeout))),
        };
        let attempts = due.delivery.attempts + 1;
        let retry_in = self
            .settings
            .retry
            .next_delay(attempts, rand::random::<f64>());
        let reason = describe_failure(status_code, error.as_deref());
        tracing::info!(
            delivery = due.delivery.id,
            url = due.url.as_str(),
            attempts,
            reason = %reason,
            gives_up = retry_in.is_none(),
            "webhook delivery failed"
        );
        DeliveryAttempt {
            delivery_id: due.delivery.id,
            attempted_at,
            state: if retry_in.is_some() {
                DeliveryState::Pending
            } else {
                DeliveryState::Failed
            },
            status_code,
            error: Some(reason),
            next_attempt_at: retry_in.map(|delay| attempted_at.plus_millis(millis(delay))),
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A transport failure in words: timeout, refused connection, or the innermost cause.
fn transport_failure(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs_f64());
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if error.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        cause.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let secret = Secret::new("Jefe");
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
