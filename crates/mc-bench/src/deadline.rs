//! The offline-deadline phase: how long after an agent's deadline its `agent.offline`
//! event reaches an SSE client, with the rest of the fleet heartbeating meanwhile.
//!
//! 1. Setup (not measured): a cohort of agents, evenly spaced over the fleet, gets a short
//!    `heartbeat_config` through `PATCH /api/v1/agents/{id}` (interval = tolerance); they
//!    have not heartbeated for longer than that, so they go offline. The bench waits
//!    until that has settled, so their setup events are over before the stream opens.
//! 2. Every other agent heartbeats as background load (the heartbeat workload, over every
//!    replica), and an SSE client follows `GET /api/v1/agents/stream?event_types=agent.offline`
//!    on the last replica.
//! 3. Each cohort agent sends one heartbeat (paced evenly over `spread`, cohort agents
//!    taking turns over the replicas) and goes silent. The answer carries its
//!    `last_seen_at` and `heartbeat_config.missing_tolerance`: its deadline is their sum,
//!    from data the server returned.
//! 4. Latency = the event's arrival at the client − the agent's deadline. Each cohort
//!    agent must get exactly one `agent.offline` event after its deadline: none is
//!    "missing", more are "duplicates", and one stamped before the deadline (but after
//!    the heartbeat) would be a false offline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::task::JoinSet;

use crate::http::Conn;
use crate::load::{self, CpuProbe, Endpoint, PhaseResult, Target, Workload};
use crate::seed::{AGENT_TOKEN_HEADER, Seeder};
use crate::sse;

/// How the phase runs.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineConfig {
    /// Agents that go silent.
    pub cohort: usize,
    /// Their `missing_tolerance` (and `interval_seconds`), seconds.
    pub tolerance_seconds: u32,
    /// Their single heartbeats are spread evenly over this long.
    pub spread: Duration,
    /// How long past the last deadline to wait for events before calling them missing.
    pub grace: Duration,
    /// Connections the cohort's requests use (spread over the replicas).
    pub cohort_connections: usize,
    /// Background heartbeat connections.
    pub background_connections: usize,
    /// Unmeasured warm-up of the background load before the cohort heartbeats.
    pub warmup: Duration,
    /// Bound on each request.
    pub request_timeout: Duration,
}

/// One cohort agent's single heartbeat, as the server answered it.
#[derive(Debug, Clone, Copy)]
struct Beat {
    /// Which replica took it.
    replica: usize,
    /// `last_seen_at`, ms since the epoch.
    last_seen_ms: i64,
    /// `last_seen_at + missing_tolerance`, ms since the epoch.
    deadline_ms: i64,
}

/// What the phase measured.
pub struct DeadlineResult {
    /// Agents in the cohort.
    pub cohort: usize,
    /// Their tolerance, seconds (as the server answered it).
    pub tolerance_seconds: u32,
    /// Seconds over which their heartbeats were spread.
    pub spread: Duration,
    /// Replica (0-based) whose stream was followed.
    pub stream_replica: usize,
    /// Replicas in the run.
    pub replicas: usize,
    /// The replica that said it leads (`mc_leader 1`) at the end, if one did.
    pub leader: Option<usize>,
    /// Latencies and event counts.
    pub tally: Tally,
    /// `agent.offline` events of agents outside the cohort.
    pub foreign: u64,
    /// Other events the stream sent (`lagged`, `error`, `shutdown`).
    pub stream_notes: Vec<String>,
    /// How the stream ended.
    pub stream_end: String,
    /// Cohort heartbeats or setup requests that failed.
    pub request_errors: u64,
    /// First such failure.
    pub first_error: Option<String>,
    /// The background heartbeat load during the phase (cohort heartbeats to the last event).
    pub background: PhaseResult,
}

/// Each cohort agent's events held against its heartbeat and deadline.
pub struct Tally {
    /// Arrival − deadline, µs, over cohort agents with an event after their deadline.
    pub latency: Histogram<u64>,
    /// The same, split by the replica that took the agent's heartbeat.
    pub latency_by_replica: Vec<Histogram<u64>>,
    /// Event `created_at` − deadline, µs: when the server recorded the transition.
    pub detect: Histogram<u64>,
    /// Arrival − event `created_at`, µs: from the record to the client.
    pub deliver: Histogram<u64>,
    /// Cohort agents with an event after their deadline.
    pub on_time: u64,
    /// Cohort agents without one (a failed heartbeat included: it has no deadline).
    pub missing: u64,
    /// Events beyond the first after the deadline.
    pub duplicates: u64,
    /// Events stamped after the agent's heartbeat but before its deadline (false offline).
    pub early: u64,
    /// Events stamped before the agent's heartbeat (left over from the setup).
    pub stale: u64,
}

impl Tally {
    /// Sorts out each agent's events (`(created_at ms, arrival µs)`, any order) against its
    /// heartbeat (`None` when it failed).
    fn of(
        beats: &[Option<Beat>],
        per_agent: &mut [Vec<(i64, i64)>],
        replicas: usize,
    ) -> Result<Self> {
        let mut t = Self {
            latency: histogram()?,
            latency_by_replica: (0..replicas).map(|_| histogram()).collect::<Result<_>>()?,
            detect: histogram()?,
            deliver: histogram()?,
            on_time: 0,
            missing: 0,
            duplicates: 0,
            early: 0,
            stale: 0,
        };
        for (beat, events) in beats.iter().zip(per_agent.iter_mut()) {
            let Some(b) = beat else {
                t.missing += 1;
                continue;
            };
            events.sort_unstable();
            let mut first = true;
            for &(created_ms, arrived_us) in events.iter() {
                if created_ms < b.last_seen_ms {
                    t.stale += 1;
                } else if created_ms < b.deadline_ms {
                    t.early += 1;
                } else if first {
                    first = false;
                    t.on_time += 1;
                    let latency = (arrived_us - b.deadline_ms * 1000).max(0) as u64;
                    t.latency.saturating_record(latency);
                    if let Some(h) = t.latency_by_replica.get_mut(b.replica) {
                        h.saturating_record(latency);
                    }
                    t.detect
                        .saturating_record(((created_ms - b.deadline_ms) * 1000).max(0) as u64);
                    t.deliver
                        .saturating_record((arrived_us - created_ms * 1000).max(0) as u64);
                } else {
                    t.duplicates += 1;
                }
            }
            if first {
                t.missing += 1;
            }
        }
        Ok(t)
    }
}

impl DeadlineResult {
    /// Latency quantile in milliseconds.
    pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 10 min in microseconds.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// Evenly spaced agent indices: `cohort` of `agents`.
pub fn cohort_indices(agents: usize, cohort: usize) -> Vec<usize> {
    (0..cohort).map(|j| j * agents / cohort.max(1)).collect()
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
fn millis(v: &serde_json::Value, what: &str) -> Result<i64> {
    let text = v
        .as_str()
        .ok_or_else(|| anyhow!("no {what} in the answer"))?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("{what} {text:?} is not RFC 3339"))
}

/// Runs the phase on the running replicas.
pub async fn run(
    endpoints: &[Endpoint],
    seeder: &Seeder,
    cfg: DeadlineConfig,
    probe: CpuProbe,
) -> Result<DeadlineResult> {
    let agents = seeder.tokens.len();
    if cfg.cohort == 0 || cfg.cohort >= agents {
        bail!(
            "the deadline cohort ({}) must be between 1 and the agent count ({agents}) minus one",
            cfg.cohort
        );
    }
    let cohort = cohort_indices(agents, cfg.cohort);
    let in_cohort: std::collections::HashSet<usize> = cohort.iter().copied().collect();
    let ids: HashMap<String, usize> = cohort
        .iter()
        .enumerate()
        .map(|(j, &i)| (seeder.ids[i].clone(), j))
        .collect();
    let auth = seeder.admin_auth().clone();
    let conns = cfg.cohort_connections.max(1);

    // 1. Setup: the cohort's short tolerance; they go offline and settle.
    eprintln!(
        "  deadline setup: {} agents get heartbeat_config interval = tolerance = {} s",
        cohort.len(),
        cfg.tolerance_seconds
    );
    let body = json!({"heartbeat_config": {
        "interval_seconds": cfg.tolerance_seconds,
        "missing_tolerance": cfg.tolerance_seconds,
    }});
    let patches: Vec<(usize, String)> = cohort
        .iter()
        .enumerate()
        .map(|(j, &i)| (j, format!("/api/v1/agents/{}", seeder.ids[i])))
        .collect();
    let patches = Arc::new(patches);
    let mut tasks = JoinSet::new();
    for c in 0..conns {
        let patches = patches.clone();
        let mut conn = Conn::new(seeder.addr(c), cfg.request_timeout);
        let auth = auth.clone();
        let body = body.clone();
        tasks.spawn(async move {
            for (j, path) in patches.iter() {
                if j % conns != c {
                    continue;
                }
                let r = conn
                    .json(
                        Method::PATCH,
                        path,
                        &[(AUTHORIZATION.as_str(), &auth)],
                        &body,
                    )
                    .await
                    .with_context(|| format!("PATCH {path}"))?;
                if r.status != StatusCode::OK {
                    bail!("PATCH {path}: HTTP {} — {}", r.status, r.body_snippet());
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("setup task failed: {e}"))??;
    }
    // Silent for longer than the new tolerance already, they go offline at the next
    // deadline pass; the extra seconds let the events reach every replica's feed.
    let settle = Duration::from_secs(u64::from(cfg.tolerance_seconds) + 3);
    tokio::time::sleep(settle).await;

    // 2. Background load and the stream.
    let background_tokens: Vec<HeaderValue> = seeder
        .tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| !in_cohort.contains(i))
        .map(|(_, t)| t.clone())
        .collect();
    let running = load::start(
        endpoints,
        vec![Workload {
            target: Target::Heartbeat(Arc::new(background_tokens)),
            connections: cfg.background_connections,
        }],
        cfg.warmup,
        cfg.request_timeout,
        probe,
    )
    .await?;
    let stream_replica = endpoints.len() - 1;
    let path = format!(
        "/api/v1/agents/stream?event_types=agent.offline&board_id={}",
        seeder.board_id()
    );
    let mut stream = sse::open(endpoints[stream_replica].addr, &path, &auth).await?;
    tokio::time::sleep_until(running.measure_from().into()).await;

    // 3. One heartbeat per cohort agent, paced.
    eprintln!(
        "  deadline phase: {} single heartbeats over {:.1} s, stream on replica {}, {} background connections",
        cohort.len(),
        cfg.spread.as_secs_f64(),
        stream_replica + 1,
        cfg.background_connections
    );
    let started = Instant::now();
    let step = cfg.spread.as_secs_f64() / cohort.len() as f64;
    let tokens: Arc<Vec<(usize, HeaderValue)>> = Arc::new(
        cohort
            .iter()
            .enumerate()
            .map(|(j, &i)| (j, seeder.tokens[i].clone()))
            .collect(),
    );
    let mut tasks = JoinSet::new();
    for c in 0..conns {
        let tokens = tokens.clone();
        let replica = c % endpoints.len();
        let mut conn = Conn::new(endpoints[replica].addr, cfg.request_timeout);
        tasks.spawn(async move {
            let mut beats = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            for (j, token) in tokens.iter() {
                if j % conns != c {
                    continue;
                }
                let at = started + Duration::from_secs_f64(step * *j as f64);
                tokio::time::sleep_until(at.into()).await;
                match beat(&mut conn, token).await {
                    Ok((last_seen_ms, tolerance_ms)) => beats.push((
                        *j,
                        Beat {
                            replica,
                            last_seen_ms,
                            deadline_ms: last_seen_ms + tolerance_ms,
                        },
                    )),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (beats, errors, first_error)
        });
    }
    let mut beats: Vec<Option<Beat>> = vec![None; cohort.len()];
    let mut request_errors = 0;
    let mut first_error = None;
    let mut tolerance_seconds = cfg.tolerance_seconds;
    while let Some(r) = tasks.join_next().await {
        let (mine, errors, first) = r.map_err(|e| anyhow!("cohort task failed: {e}"))?;
        request_errors += errors;
        if first_error.is_none() {
            first_error = first;
        }
        for (j, b) in mine {
            tolerance_seconds =
                u32::try_from((b.deadline_ms - b.last_seen_ms) / 1000).unwrap_or(tolerance_seconds);
            beats[j] = Some(b);
        }
    }
    let last_deadline = beats
        .iter()
        .flatten()
        .map(|b| b.deadline_ms)
        .max()
        .unwrap_or(0);

    // 4. Collect events until every cohort agent has one (then a little longer, for
    // duplicates) or the grace after the last deadline is over.
    let grace_end_us = (last_deadline + cfg.grace.as_millis() as i64) * 1000;
    let mut per_agent: Vec<Vec<(i64, i64)>> = vec![Vec::new(); cohort.len()];
    let mut foreign = 0;
    let mut stream_notes = Vec::new();
    let mut have = 0usize;
    let expected = beats.iter().flatten().count();
    let mut all_in_at: Option<i64> = None;
    loop {
        let now = sse::now_us();
        let until = match all_in_at {
            Some(t) => t + 2_000_000,
            None => grace_end_us,
        };
        if now >= until {
            break;
        }
        let wait = Duration::from_micros((until - now) as u64).min(Duration::from_millis(200));
        let Ok(got) = tokio::time::timeout(wait, stream.events.recv()).await else {
            continue;
        };
        let Some(ev) = got else {
            break;
        };
        if ev.event != "agent.offline" {
            stream_notes.push(format!("{}: {}", ev.event, ev.data));
            continue;
        }
        let msg: serde_json::Value = serde_json::from_str(&ev.data)
            .with_context(|| format!("agent.offline data is not JSON: {}", ev.data))?;
        let Some(agent_id) = msg["event"]["agent_id"].as_str() else {
            foreign += 1;
            continue;
        };
        let created_ms = millis(&msg["event"]["created_at"], "event.created_at")?;
        match ids.get(agent_id) {
            Some(&j) => {
                per_agent[j].push((created_ms, ev.arrived_us));
                if let Some(b) = beats[j]
                    && created_ms >= b.deadline_ms
                    && per_agent[j]
                        .iter()
                        .filter(|(c, _)| *c >= b.deadline_ms)
                        .count()
                        == 1
                {
                    have += 1;
                    if have == expected {
                        all_in_at = Some(sse::now_us());
                    }
                }
            }
            None => foreign += 1,
        }
    }
    let background = running
        .stop()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no background result"))?;
    let stream_end = match stream.close().await {
        sse::StreamEnd::Closed => "open until the bench closed it".to_owned(),
        sse::StreamEnd::ByServer => "ended by the server".to_owned(),
        sse::StreamEnd::Failed(e) => format!("failed: {e}"),
    };

    Ok(DeadlineResult {
        cohort: cohort.len(),
        tolerance_seconds,
        spread: cfg.spread,
        stream_replica,
        replicas: endpoints.len(),
        leader: leader(endpoints, cfg.request_timeout).await,
        tally: Tally::of(&beats, &mut per_agent, endpoints.len())?,
        foreign,
        stream_notes,
        stream_end,
        request_errors,
        first_error,
        background,
    })
}

/// One agent heartbeat; returns `last_seen_at` and the tolerance from the answer, in ms.
async fn beat(conn: &mut Conn, token: &HeaderValue) -> Result<(i64, i64)> {
    let req = hyper::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/agent/heartbeat")
        .header(hyper::header::HOST, conn.host().clone())
        .header(hyper::header::CONTENT_LENGTH, HeaderValue::from_static("0"))
        .header(AGENT_TOKEN_HEADER, token.clone())
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let resp = conn.send(req).await.context("cohort heartbeat")?;
    if resp.status != StatusCode::OK {
        bail!(
            "cohort heartbeat: HTTP {} — {}",
            resp.status,
            resp.body_snippet()
        );
    }
    let v = resp.json()?;
    let last_seen = millis(&v["last_seen_at"], "last_seen_at")?;
    let tolerance = v["heartbeat_config"]["missing_tolerance"]
        .as_i64()
        .ok_or_else(|| anyhow!("no heartbeat_config.missing_tolerance in the answer"))?;
    Ok((last_seen, tolerance * 1000))
}

/// The replica whose `/metrics` says `mc_leader 1`.
async fn leader(endpoints: &[Endpoint], timeout: Duration) -> Option<usize> {
    for (r, e) in endpoints.iter().enumerate() {
        let mut c = Conn::new(e.addr, timeout);
        let req = hyper::Request::builder()
            .method(Method::GET)
            .uri("/metrics")
            .header(hyper::header::HOST, c.host().clone())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .ok()?;
        let Ok(resp) = c.send(req).await else {
            continue;
        };
        if String::from_utf8_lossy(&resp.body)
            .lines()
            .any(|l| l.trim() == "mc_leader 1")
        {
            return Some(r);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cohort_is_spread_evenly_over_the_fleet_without_repeats() {
        assert_eq!(cohort_indices(10, 3), vec![0, 3, 6]);
        let c = cohort_indices(100_000, 2_000);
        assert_eq!(c.len(), 2_000);
        assert!(c.windows(2).all(|w| w[1] - w[0] == 50));
    }

    #[test]
    fn each_agent_counts_once_on_time_and_every_other_event_is_sorted_out() {
        let beat = |replica| {
            Some(Beat {
                replica,
                last_seen_ms: 10_000,
                deadline_ms: 11_000,
            })
        };
        let beats = [beat(0), beat(1), beat(0), beat(0), None];
        let mut events = vec![
            // Recorded 40 ms after the deadline, at the client 50 ms after it; then again.
            vec![(11_040, 11_050_000), (11_900, 11_950_000)],
            // Recorded at the deadline itself: on time, latency = arrival − deadline.
            vec![(11_000, 11_200_000)],
            // Offline before the deadline (false) and from before the heartbeat (setup).
            vec![(10_500, 10_600_000), (9_000, 9_100_000)],
            // Nothing.
            vec![],
            // A failed heartbeat has no deadline.
            vec![(12_000, 12_000_000)],
        ];
        let t = Tally::of(&beats, &mut events, 2).unwrap();
        assert_eq!(
            (t.on_time, t.duplicates, t.early, t.stale, t.missing),
            (2, 1, 1, 1, 3)
        );
        assert_eq!(t.latency.len(), 2);
        assert_eq!(t.latency_by_replica[0].len(), 1);
        assert_eq!(t.latency_by_replica[1].len(), 1);
        assert!(t.latency.equivalent(t.latency.max(), 200_000));
        assert!(t.latency.equivalent(t.latency.min(), 50_000));
        assert!(t.detect.equivalent(t.detect.max(), 40_000));
        assert!(t.deliver.equivalent(t.deliver.max(), 200_000));
    }
}
