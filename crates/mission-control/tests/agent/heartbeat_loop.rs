//! The heartbeat loop against the real server, through a loopback front that can fail
//! on purpose: backoff, the configured interval, Retry-After, refused credentials,
//! degraded reports and the final `offline`.

use std::sync::Arc;
use std::time::Duration;

use mc_client::agent::{
    Backoff, BeatError, Credential, HealthSource, Heartbeater, LoopEvent, LoopSettings, Origin,
    StatusCommand, Stopped, run,
};
use mc_client::{Client, Failure, HealthStatus, Secret};
use tokio::sync::Notify;

use crate::helpers::{Front, Scripted, TestServer, status};

/// One event of the loop, kept for the assertions.
#[derive(Debug, Clone)]
enum Recorded {
    Beat {
        agent_status: String,
        reported: HealthStatus,
        reason: Option<String>,
        next_in: Duration,
    },
    Failed {
        attempt: u32,
        reason: String,
        retry_in: Duration,
    },
    Other,
    OfflineSent {
        agent_status: String,
    },
}

struct Outcome {
    result: Result<Stopped, BeatError>,
    events: Vec<Recorded>,
}

impl Outcome {
    fn failures(&self) -> Vec<(u32, String, Duration)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Recorded::Failed {
                    attempt,
                    reason,
                    retry_in,
                } => Some((*attempt, reason.clone(), *retry_in)),
                _ => None,
            })
            .collect()
    }

    fn beats(&self) -> Vec<Recorded> {
        self.events
            .iter()
            .filter(|e| matches!(e, Recorded::Beat { .. }))
            .cloned()
            .collect()
    }
}

fn heartbeater(base_url: &str, token: &Secret) -> Heartbeater {
    Heartbeater::new(
        Client::new(base_url, Duration::from_secs(5)).expect("a client"),
        Credential::Token {
            token: token.clone(),
            origin: Origin::Flag("--token / MC_AGENT_TOKEN"),
        },
    )
}

fn settings(backoff: Backoff, health: HealthSource) -> LoopSettings {
    LoopSettings {
        backoff,
        health,
        offline_timeout: Duration::from_secs(5),
    }
}

fn healthy() -> HealthSource {
    HealthSource::Fixed(HealthStatus::Healthy)
}

/// Runs the loop until `beats` heartbeats went through (or `limit` passed), then
/// requests shutdown.
async fn run_until(
    heartbeater: &mut Heartbeater,
    settings: &LoopSettings,
    beats: usize,
    limit: Duration,
) -> Outcome {
    let enough = Arc::new(Notify::new());
    let shutdown = {
        let enough = Arc::clone(&enough);
        async move {
            tokio::select! {
                () = enough.notified() => {}
                () = tokio::time::sleep(limit) => {}
            }
        }
    };
    let mut events = Vec::new();
    let mut seen_beats = 0;
    let result = run(heartbeater, settings, shutdown, &mut |event| {
        events.push(match event {
            LoopEvent::Beat {
                agent,
                reported,
                next_in,
            } => {
                seen_beats += 1;
                if seen_beats == beats {
                    enough.notify_one();
                }
                Recorded::Beat {
                    agent_status: agent.status.clone(),
                    reported: reported.status,
                    reason: reported.reason.clone(),
                    next_in: *next_in,
                }
            }
            LoopEvent::Failed {
                attempt,
                error,
                retry_in,
            } => Recorded::Failed {
                attempt: *attempt,
                reason: error.to_string(),
                retry_in: *retry_in,
            },
            LoopEvent::OfflineSent { agent } => Recorded::OfflineSent {
                agent_status: agent.status.clone(),
            },
            _ => Recorded::Other,
        });
    })
    .await;
    Outcome { result, events }
}

#[tokio::test]
async fn failed_heartbeats_back_off_exponentially_until_the_server_recovers() {
    let server = TestServer::spawn().await;
    let (agent_id, token) = server.agent(1).await;
    let front = Front::start(Some(&server.address), vec![status(503); 4]).await;
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    let mut heartbeater = heartbeater(&front.address, &token);

    let outcome = run_until(
        &mut heartbeater,
        &settings(backoff, healthy()),
        2,
        Duration::from_secs(30),
    )
    .await;

    assert_eq!(
        *outcome.result.as_ref().unwrap(),
        Stopped { offline_sent: true }
    );
    let failures = outcome.failures();
    assert_eq!(failures.len(), 4, "one event per failure: {failures:?}");
    let mut previous = Duration::ZERO;
    for (index, (attempt, reason, retry_in)) in failures.iter().enumerate() {
        assert_eq!(*attempt as usize, index + 1);
        assert!(
            reason.contains("503"),
            "the reason names the answer: {reason}"
        );
        let ceiling = backoff.ceiling(*attempt);
        assert!(
            *retry_in >= ceiling / 2 && *retry_in <= ceiling,
            "attempt {attempt}: {retry_in:?} outside [{:?}, {ceiling:?}]",
            ceiling / 2
        );
        assert!(*retry_in >= previous, "backoff never shrinks: {failures:?}");
        previous = *retry_in;
    }
    let seen = front.seen();
    let answered: Vec<u16> = seen.iter().map(|s| s.answered).collect();
    assert_eq!(
        &answered[..6],
        &[503, 503, 503, 503, 200, 200],
        "{answered:?}"
    );
    for (index, (_, _, retry_in)) in failures.iter().enumerate() {
        let gap = seen[index + 1].at - seen[index].at;
        assert!(
            gap >= *retry_in,
            "retry {index} came after {gap:?}, before {retry_in:?}"
        );
    }
    let after_recovery = seen[5].at - seen[4].at;
    assert!(
        after_recovery >= Duration::from_secs(1),
        "after a success the agent waits its interval: {after_recovery:?}"
    );
    assert!(
        matches!(&outcome.beats()[0], Recorded::Beat { agent_status, .. } if agent_status == "healthy")
    );
    assert_eq!(server.status_of(agent_id).await, "offline");
}

#[tokio::test]
async fn heartbeats_follow_the_agents_configured_interval_never_sooner() {
    let server = TestServer::spawn().await;
    let (_, token) = server.agent(1).await;
    let front = Front::start(Some(&server.address), Vec::new()).await;
    let mut heartbeater = heartbeater(&front.address, &token);

    let outcome = run_until(
        &mut heartbeater,
        &settings(Backoff::default(), healthy()),
        usize::MAX,
        Duration::from_millis(3500),
    )
    .await;

    assert!(outcome.result.is_ok());
    let beats: Vec<_> = front
        .seen()
        .into_iter()
        .filter(|s| s.reported.as_deref() == Some("healthy"))
        .collect();
    // At most 4 in 3.5 s when no gap is shorter than 1 s; at least 2 on a busy machine.
    assert!(
        (2..=4).contains(&beats.len()),
        "3.5 s at a 1 s interval: {} heartbeats",
        beats.len()
    );
    for pair in beats.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(1),
            "sooner than configured: {gap:?}"
        );
        assert!(
            gap <= Duration::from_secs(2),
            "at most 10 % jitter (plus request time and scheduling slack): {gap:?}"
        );
    }
    for beat in outcome.beats() {
        let Recorded::Beat { next_in, .. } = beat else {
            unreachable!()
        };
        assert!(next_in >= Duration::from_secs(1) && next_in <= Duration::from_millis(1100));
    }
}

#[tokio::test]
async fn a_throttled_heartbeat_waits_at_least_the_servers_retry_after() {
    let server = TestServer::spawn().await;
    let (_, token) = server.agent(60).await;
    let script = vec![Scripted::Status {
        status: 429,
        retry_after: Some(1),
    }];
    let front = Front::start(Some(&server.address), script).await;
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(40),
    };
    let mut heartbeater = heartbeater(&front.address, &token);

    let outcome = run_until(
        &mut heartbeater,
        &settings(backoff, healthy()),
        1,
        Duration::from_secs(30),
    )
    .await;

    assert!(outcome.result.is_ok());
    let failures = outcome.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].1.contains("429"), "{failures:?}");
    assert!(failures[0].2 >= Duration::from_secs(1), "{failures:?}");
    let seen = front.seen();
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_refused_token_stops_the_loop_at_once_with_advice() {
    let server = TestServer::spawn().await;
    let front = Front::start(Some(&server.address), Vec::new()).await;
    let mut heartbeater = heartbeater(&front.address, &Secret::new("not-a-real-agent-token"));

    let outcome = run_until(
        &mut heartbeater,
        &settings(Backoff::default(), healthy()),
        1,
        Duration::from_secs(30),
    )
    .await;

    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.failure(), Failure::CredentialsRefused);
    let message = error.to_string();
    assert!(message.contains("401"), "{message}");
    assert!(
        message.contains("--token / MC_AGENT_TOKEN"),
        "names the source: {message}"
    );
    assert!(
        message.contains("enroll again"),
        "says what to do: {message}"
    );
    assert_eq!(front.seen().len(), 1, "no retry after a 401");
    assert!(outcome.failures().is_empty());
}

#[tokio::test]
async fn a_forbidden_answer_is_not_retried_either() {
    let front = Front::start(None, vec![status(403)]).await;
    let mut heartbeater = heartbeater(&front.address, &Secret::new("some-token"));

    let outcome = run_until(
        &mut heartbeater,
        &settings(Backoff::default(), healthy()),
        1,
        Duration::from_secs(30),
    )
    .await;

    let error = outcome.result.unwrap_err();
    assert_eq!(error.failure(), Failure::CredentialsRefused);
    assert!(error.to_string().contains("403"));
    assert_eq!(front.seen().len(), 1);
}

#[tokio::test]
async fn a_failing_status_command_reports_the_agent_degraded() {
    let server = TestServer::spawn().await;
    let (agent_id, token) = server.agent(60).await;
    let mut heartbeater = heartbeater(&server.address, &token);
    let health = HealthSource::Command(StatusCommand {
        command: "exit 4".into(),
        timeout: Duration::from_secs(5),
    });

    let outcome = run_until(
        &mut heartbeater,
        &settings(Backoff::default(), health),
        1,
        Duration::from_secs(30),
    )
    .await;

    assert!(outcome.result.is_ok());
    match &outcome.beats()[0] {
        Recorded::Beat {
            agent_status,
            reported,
            reason,
            ..
        } => {
            assert_eq!(*reported, HealthStatus::Degraded);
            assert_eq!(agent_status, "degraded");
            assert!(
                reason.as_deref().unwrap_or("").contains("code 4"),
                "{reason:?}"
            );
        }
        other => panic!("a heartbeat, got {other:?}"),
    }
    assert!(
        outcome.events.iter().any(
            |e| matches!(e, Recorded::OfflineSent { agent_status } if agent_status == "offline")
        ),
        "the final heartbeat reports offline: {:?}",
        outcome.events
    );
    assert_eq!(server.status_of(agent_id).await, "offline");
}
