//! Seeding: one gateway, one board, one enrollment token, then agents enrolled through
//! `POST /api/v1/agents/heartbeat`, each yielding its own agent token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::task::JoinSet;

use crate::http::{Conn, Response};

/// Header carrying agent and enrollment tokens.
pub const AGENT_TOKEN_HEADER: &str = "x-agent-token";

/// Attempts per agent for transient failures (transport errors, timeouts, 5xx).
const ATTEMPTS: usize = 3;

/// The board agents enroll on, and the tokens of the agents enrolled so far.
pub struct Seeder {
    addr: SocketAddr,
    timeout: Duration,
    enrollment: HeaderValue,
    /// Agent tokens, index `i` belongs to `agent-<i>`.
    pub tokens: Vec<HeaderValue>,
}

/// Timing of one seeding round.
#[derive(Debug, Clone, Copy)]
pub struct SeedStats {
    /// Agents that existed before this round.
    pub from: usize,
    /// Agents after this round.
    pub to: usize,
    /// Wall time of the round.
    pub elapsed: Duration,
    /// Requests that had to be retried.
    pub retries: usize,
}

impl SeedStats {
    /// Agents enrolled per second in this round.
    pub fn rate(&self) -> f64 {
        (self.to - self.from) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Checks `resp` for a 2xx status and returns its JSON body's `field` as a string.
fn expect_field(what: &str, resp: &Response, field: &str) -> Result<String> {
    if !resp.status.is_success() {
        bail!("{what}: HTTP {} — {}", resp.status, resp.body_snippet());
    }
    let v = resp.json().with_context(|| what.to_owned())?;
    match &v[field] {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{what}: no `{field}` in response: {}", resp.body_snippet()),
    }
}

impl Seeder {
    /// Creates the gateway, the board and an enrollment token with the admin token.
    pub async fn setup(
        addr: SocketAddr,
        admin_token: &str,
        max_agents: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let auth = HeaderValue::from_str(&format!("Bearer {admin_token}"))?;
        let h = [(AUTHORIZATION.as_str(), &auth)];
        let mut c = Conn::new(addr, timeout);
        let r = c
            .json(
                Method::POST,
                "/api/v1/gateways",
                &h,
                &json!({"name": "bench", "url": "", "workspace_root": ""}),
            )
            .await
            .context("POST /api/v1/gateways")?;
        let gateway_id = expect_field("POST /api/v1/gateways", &r, "id")?;
        let r = c
            .json(
                Method::POST,
                "/api/v1/boards",
                &h,
                &json!({
                    "name": "Bench",
                    "slug": "bench",
                    "description": "benchmark board",
                    "gateway_id": gateway_id,
                    "max_agents": max_agents.max(1_000_000),
                }),
            )
            .await
            .context("POST /api/v1/boards")?;
        let board_id = expect_field("POST /api/v1/boards", &r, "id")?;
        let path = format!("/api/v1/boards/{board_id}/enrollment-tokens");
        let r = c
            .json(
                Method::POST,
                &path,
                &h,
                &json!({"expires_in_seconds": 86400}),
            )
            .await
            .with_context(|| format!("POST {path}"))?;
        let token = expect_field(&format!("POST {path}"), &r, "token")?;
        Ok(Self {
            addr,
            timeout,
            enrollment: HeaderValue::from_str(&token)
                .context("enrollment token is not a valid header value")?,
            tokens: Vec::new(),
        })
    }

    /// Enrolls agents `agent-<len>` .. `agent-<target-1>` with `concurrency` requests in
    /// flight, giving up after `limit`.
    pub async fn seed_to(
        &mut self,
        target: usize,
        concurrency: usize,
        limit: Duration,
    ) -> Result<SeedStats> {
        let from = self.tokens.len();
        if target <= from {
            return Ok(SeedStats {
                from,
                to: from,
                elapsed: Duration::ZERO,
                retries: 0,
            });
        }
        let next = Arc::new(AtomicUsize::new(from));
        let done = Arc::new(AtomicUsize::new(0));
        let retries = Arc::new(AtomicUsize::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.clamp(1, target - from) {
            let (next, done, retries, abort) =
                (next.clone(), done.clone(), retries.clone(), abort.clone());
            let mut conn = Conn::new(self.addr, self.timeout);
            let enrollment = self.enrollment.clone();
            workers.spawn(async move {
                let mut mine: Vec<(usize, HeaderValue)> = Vec::new();
                while !abort.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= target {
                        break;
                    }
                    match enroll(&mut conn, &enrollment, i, &retries).await {
                        Ok(tok) => {
                            mine.push((i, tok));
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
                Ok(mine)
            });
        }
        let progress = {
            let done = done.clone();
            let total = target - from;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let d = done.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "  seeding: {d}/{total} agents in {secs:.0} s ({:.0}/s)",
                        d as f64 / secs
                    );
                }
            })
        };
        let collected = tokio::time::timeout(limit, async {
            let mut all = Vec::with_capacity(target - from);
            let mut first_err = None;
            while let Some(res) = workers.join_next().await {
                match res {
                    Ok(Ok(mine)) => all.extend(mine),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(e) => {
                        first_err.get_or_insert(anyhow!("seeding task failed: {e}"));
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(all),
            }
        })
        .await;
        progress.abort();
        let mut all = match collected {
            Ok(r) => r?,
            Err(_) => {
                abort.store(true, Ordering::Relaxed);
                workers.abort_all();
                bail!(
                    "seeding did not finish within {limit:?} ({} of {} agents enrolled); raise --seed-timeout",
                    done.load(Ordering::Relaxed),
                    target - from
                );
            }
        };
        let elapsed = started.elapsed();
        all.sort_unstable_by_key(|(i, _)| *i);
        if all.len() != target - from {
            bail!(
                "seeding enrolled {} agents, expected {}",
                all.len(),
                target - from
            );
        }
        self.tokens.extend(all.into_iter().map(|(_, t)| t));
        Ok(SeedStats {
            from,
            to: target,
            elapsed,
            retries: retries.load(Ordering::Relaxed),
        })
    }
}

/// Enrolls `agent-<i>` and returns its own token, retrying transient failures.
async fn enroll(
    conn: &mut Conn,
    enrollment: &HeaderValue,
    i: usize,
    retries: &AtomicUsize,
) -> Result<HeaderValue> {
    let body = json!({ "name": format!("agent-{i}") });
    let mut last_err = anyhow!("no attempt made");
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let resp = match conn
            .json(
                Method::POST,
                "/api/v1/agents/heartbeat",
                &[(AGENT_TOKEN_HEADER, enrollment)],
                &body,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last_err = e.context(format!("enrolling agent-{i}"));
                continue;
            }
        };
        if resp.status.is_success() {
            return resp.headers.get(AGENT_TOKEN_HEADER).cloned().ok_or_else(|| {
                anyhow!(
                    "enrolling agent-{i}: HTTP {} without an X-Agent-Token response header; body: {}",
                    resp.status,
                    resp.body_snippet()
                )
            });
        }
        last_err = anyhow!(
            "enrolling agent-{i}: POST /api/v1/agents/heartbeat → HTTP {} — {}",
            resp.status,
            resp.body_snippet()
        );
        // 4xx will not get better by retrying (except 429).
        if resp.status.is_client_error() && resp.status != StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    Err(last_err)
}
