//! The heartbeat loop: heartbeat, wait the agent's interval (with jitter), repeat;
//! on transient failures back off; on refused credentials or a permanent failure stop
//! with the error; on shutdown send a final `offline` heartbeat and return.
//!
//! Every step is reported once as a [`LoopEvent`] to an observer. [`EventLog`] is the
//! observer that turns them into log lines (one per failure, with its reason); tests
//! observe the same events.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::time::Duration;

use super::health::{HealthReport, HealthSource};
use super::heartbeater::{BeatError, Heartbeater};
use super::schedule::{Backoff, next_heartbeat_in};
use crate::error::Failure;
use crate::wire::{AgentRead, HealthStatus};

/// How long an in-flight heartbeat may finish after shutdown is requested, so the final
/// `offline` is the last word the server hears.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Backoff for transient failures.
    pub backoff: Backoff,
    /// What each heartbeat reports.
    pub health: HealthSource,
    /// How long the final `offline` heartbeat may take.
    pub offline_timeout: Duration,
}

/// One step of the loop.
#[derive(Debug)]
pub enum LoopEvent<'a> {
    /// The agent was enrolled; its own token is saved in `token_file`.
    Enrolled {
        /// The new agent.
        agent: &'a AgentRead,
        /// Where its token is kept.
        token_file: &'a Path,
    },
    /// A heartbeat went through.
    Beat {
        /// The agent as the server sees it now.
        agent: &'a AgentRead,
        /// What was reported.
        reported: &'a HealthReport,
        /// When the next heartbeat goes out.
        next_in: Duration,
    },
    /// A heartbeat failed transiently; it is retried after `retry_in`.
    Failed {
        /// Consecutive failures so far (1 = the first).
        attempt: u32,
        /// Why.
        error: &'a BeatError,
        /// The backoff before the retry.
        retry_in: Duration,
    },
    /// Shutdown was requested; the final `offline` heartbeat follows (when the agent has
    /// its own token).
    Stopping,
    /// The final `offline` heartbeat went through.
    OfflineSent {
        /// The agent as the server sees it now.
        agent: &'a AgentRead,
    },
    /// The final `offline` heartbeat failed.
    OfflineFailed {
        /// Why.
        error: &'a BeatError,
    },
}

/// How the loop ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Whether the final `offline` heartbeat reached the server.
    pub offline_sent: bool,
}

/// Heartbeats until `shutdown` resolves (then reports `offline` and returns) or a failure
/// that retrying cannot fix (returned as the error, not reported as an event).
pub async fn run(
    heartbeater: &mut Heartbeater,
    settings: &LoopSettings,
    shutdown: impl Future<Output = ()>,
    observer: &mut dyn FnMut(&LoopEvent<'_>),
) -> Result<Stopped, BeatError> {
    let mut shutdown = pin!(shutdown);
    let mut failures: u32 = 0;
    let mut rng = rand::rng();
    loop {
        let delay = {
            let beat = async {
                let report = settings.health.report().await;
                let result = heartbeater.beat(report.status).await;
                (report, result)
            };
            let mut beat = pin!(beat);
            let (report, result) = tokio::select! {
                done = &mut beat => done,
                () = &mut shutdown => {
                    let _ = tokio::time::timeout(IN_FLIGHT_GRACE, beat).await;
                    break;
                }
            };
            match result {
                Ok(outcome) => {
                    failures = 0;
                    if let Some(token_file) = &outcome.enrolled {
                        observer(&LoopEvent::Enrolled {
                            agent: &outcome.agent,
                            token_file,
                        });
                    }
                    let interval = Duration::from_secs(u64::from(
                        outcome.agent.heartbeat_config.interval_seconds.max(1),
                    ));
                    let next_in = next_heartbeat_in(interval, &mut rng);
                    observer(&LoopEvent::Beat {
                        agent: &outcome.agent,
                        reported: &report,
                        next_in,
                    });
                    next_in
                }
                Err(error) => match error.failure() {
                    Failure::Transient { retry_after } => {
                        failures = failures.saturating_add(1);
                        let retry_in = settings.backoff.delay(failures, retry_after, &mut rng);
                        observer(&LoopEvent::Failed {
                            attempt: failures,
                            error: &error,
                            retry_in,
                        });
                        retry_in
                    }
                    Failure::CredentialsRefused | Failure::Permanent => return Err(error),
                },
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => break,
        }
    }
    observer(&LoopEvent::Stopping);
    if !heartbeater.has_own_token() {
        return Ok(Stopped {
            offline_sent: false,
        });
    }
    let offline = tokio::time::timeout(
        settings.offline_timeout,
        heartbeater.beat(HealthStatus::Offline),
    )
    .await;
    let offline_sent = match offline {
        Ok(Ok(outcome)) => {
            observer(&LoopEvent::OfflineSent {
                agent: &outcome.agent,
            });
            true
        }
        Ok(Err(error)) => {
            observer(&LoopEvent::OfflineFailed { error: &error });
            false
        }
        Err(_) => {
            let error = BeatError::Request {
                error: crate::ClientError::Unreachable {
                    url: heartbeater.client().base_url().to_owned(),
                    reason: format!(
                        "no answer within {} s",
                        settings.offline_timeout.as_secs_f64()
                    ),
                },
                advice: None,
            };
            observer(&LoopEvent::OfflineFailed { error: &error });
            false
        }
    };
    Ok(Stopped { offline_sent })
}

/// The observer that logs: one line per failure with its reason, a line when the
/// reported status changes or the agent is enrolled, routine heartbeats at debug.
#[derive(Debug, Default)]
pub struct EventLog {
    last_reported: Option<HealthStatus>,
}

impl EventLog {
    /// Logs one event.
    pub fn record(&mut self, event: &LoopEvent<'_>) {
        match event {
            LoopEvent::Enrolled { agent, token_file } => tracing::info!(
                agent.id = %agent.id,
                agent.name = %agent.name,
                token_file = %token_file.display(),
                "enrolled; the agent's own token is saved for the next runs"
            ),
            LoopEvent::Beat {
                agent,
                reported,
                next_in,
            } => {
                let changed = self.last_reported != Some(reported.status);
                self.last_reported = Some(reported.status);
                let next_in_ms = u64::try_from(next_in.as_millis()).unwrap_or(u64::MAX);
                let reason = reported.reason.as_deref().unwrap_or("");
                if changed && reported.status != HealthStatus::Healthy {
                    tracing::warn!(agent.id = %agent.id, agent.status = %agent.status,
                        reported = %reported.status, reason, next_in_ms, "heartbeat sent; reporting degraded");
                } else if changed {
                    tracing::info!(agent.id = %agent.id, agent.status = %agent.status,
                        reported = %reported.status, next_in_ms, "heartbeat sent");
                } else {
                    tracing::debug!(agent.id = %agent.id, agent.status = %agent.status,
                        reported = %reported.status, reason, next_in_ms, "heartbeat sent");
                }
            }
            LoopEvent::Failed {
                attempt,
                error,
                retry_in,
            } => tracing::warn!(
                attempt,
                retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                reason = %error,
                "heartbeat failed; retrying"
            ),
            LoopEvent::Stopping => tracing::info!("stopping; reporting offline"),
            LoopEvent::OfflineSent { agent } => {
                tracing::info!(agent.id = %agent.id, agent.status = %agent.status, "reported offline")
            }
            LoopEvent::OfflineFailed { error } => {
                tracing::warn!(reason = %error, "the final offline heartbeat failed")
            }
        }
    }
}
