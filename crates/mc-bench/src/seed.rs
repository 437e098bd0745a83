//! Seeding: one gateway, one board, one enrollment token, then agents enrolled through
//! `POST /api/v1/agents/heartbeat` (or created by the admin), each yielding its own agent
//! token. Before measuring, every agent can be refreshed with one heartbeat on its own
//! token so that no agent is offline (silent past its tolerance) when the phases start.
//! With several replicas, the seeding and refresh workers take turns over them, as a load
//! balancer would.

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

/// How agents are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedMode {
    /// `POST /api/v1/agents/heartbeat` with the board's enrollment token (one request; the
    /// agent's token comes back in `X-Agent-Token`).
    Enroll,
    /// `POST /api/v1/agents` then `POST /api/v1/agents/{id}/token` with the admin token.
    Admin,
}

/// Where and how agents are created.
#[derive(Clone)]
struct Creator {
    mode: SeedMode,
    enrollment: HeaderValue,
    admin: HeaderValue,
    board_id: String,
}

/// The board agents enroll on, and the tokens of the agents enrolled so far.
pub struct Seeder {
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    creator: Creator,
    /// Agent tokens, index `i` belongs to `agent-<i>`.
    pub tokens: Vec<HeaderValue>,
    /// Agent ids, index `i` belongs to `agent-<i>`.
    pub ids: Vec<String>,
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
    /// Creates the gateway, the board and an enrollment token with the admin token (on the
    /// first of `addrs`); seeding then spreads over all of them.
    pub async fn setup(
        addrs: Vec<SocketAddr>,
        admin_token: &str,
        max_agents: usize,
        timeout: Duration,
        mode: SeedMode,
    ) -> Result<Self> {
        let auth = HeaderValue::from_str(&format!("Bearer {admin_token}"))?;
        let h = [(AUTHORIZATION.as_str(), &auth)];
        let addr = *addrs.first().ok_or_else(|| anyhow!("no server to seed"))?;
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
            addrs,
            timeout,
            creator: Creator {
                mode,
                enrollment: HeaderValue::from_str(&token)
                    .context("enrollment token is not a valid header value")?,
                admin: auth,
                board_id,
            },
            tokens: Vec::new(),
            ids: Vec::new(),
        })
    }

    /// The bench board's id.
    pub fn board_id(&self) -> &str {
        &self.creator.board_id
    }

    /// The admin's `Authorization` header value.
    pub fn admin_auth(&self) -> &HeaderValue {
        &self.creator.admin
    }

    /// Sends later requests to these replicas (e.g. once late replicas have started).
    pub fn set_addrs(&mut self, addrs: Vec<SocketAddr>) {
        if !addrs.is_empty() {
            self.addrs = addrs;
        }
    }

    /// The address of replica `r` (taking turns when `r` is past the last one).
    pub fn addr(&self, r: usize) -> SocketAddr {
        self.addrs[r % self.addrs.len()]
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
        for w in 0..concurrency.clamp(1, target - from) {
            let (next, done, retries, abort) =
                (next.clone(), done.clone(), retries.clone(), abort.clone());
            let mut conn = Conn::new(self.addr(w), self.timeout);
            let creator = self.creator.clone();
            workers.spawn(async move {
                let mut mine: Vec<(usize, HeaderValue, String)> = Vec::new();
                while !abort.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= target {
                        break;
                    }
                    match creator.create(&mut conn, i, &retries).await {
                        Ok((tok, id)) => {
                            mine.push((i, tok, id));
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
        all.sort_unstable_by_key(|(i, _, _)| *i);
        if all.len() != target - from {
            bail!(
                "seeding enrolled {} agents, expected {}",
                all.len(),
                target - from
            );
        }
        for (_, token, id) in all {
            self.tokens.push(token);
            self.ids.push(id);
        }
        Ok(SeedStats {
            from,
            to: target,
            elapsed,
            retries: retries.load(Ordering::Relaxed),
        })
    }
}

impl Seeder {
    /// Sends one heartbeat with its own token for every agent (`concurrency` in flight), so
    /// that all agents are alive when the phases start. Returns the wall time.
    pub async fn refresh_all(&self, concurrency: usize, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        let tokens = Arc::new(self.tokens.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        for w in 0..concurrency.clamp(1, tokens.len().max(1)) {
            let (tokens, next, abort) = (tokens.clone(), next.clone(), abort.clone());
            let mut conn = Conn::new(self.addr(w), self.timeout);
            workers.spawn(async move {
                while !abort.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(token) = tokens.get(i) else { break };
                    let mut last = Ok(());
                    for attempt in 0..ATTEMPTS {
                        if attempt > 0 {
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                        match prime(&mut conn, token, i).await {
                            Ok(()) => {
                                last = Ok(());
                                break;
                            }
                            Err(Failure::Transient(e)) => last = Err(e),
                            Err(Failure::Fatal(e)) => {
                                last = Err(e);
                                break;
                            }
                        }
                    }
                    if let Err(e) = last {
                        abort.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            });
        }
        let joined = tokio::time::timeout(limit, async {
            let mut first_err = None;
            while let Some(r) = workers.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(e) => {
                        first_err.get_or_insert(anyhow!("refresh task failed: {e}"));
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })
        .await;
        match joined {
            Ok(r) => r?,
            Err(_) => {
                workers.abort_all();
                bail!("refreshing the agents did not finish within {limit:?}");
            }
        }
        Ok(started.elapsed())
    }

    /// Number of activity events recorded on the bench board (`GET /api/v1/activity`).
    pub async fn activity_total(&self) -> Result<u64> {
        let mut conn = Conn::new(self.addr(0), self.timeout);
        let path = format!(
            "/api/v1/activity?board_id={}&limit=1",
            self.creator.board_id
        );
        let req = hyper::Request::builder()
            .method(Method::GET)
            .uri(&path)
            .header(hyper::header::HOST, conn.host().clone())
            .header(AUTHORIZATION, self.creator.admin.clone())
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let resp = conn
            .send(req)
            .await
            .with_context(|| format!("GET {path}"))?;
        if !resp.status.is_success() {
            bail!("GET {path}: HTTP {} — {}", resp.status, resp.body_snippet());
        }
        resp.json()?["total"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET {path}: no `total` in {}", resp.body_snippet()))
    }
}

/// Whether an attempt may be retried.
enum Failure {
    /// Transport error, timeout, 5xx or 429.
    Transient(anyhow::Error),
    /// Anything else: retrying will not help.
    Fatal(anyhow::Error),
}

impl Failure {
    fn of_status(what: &str, resp: &Response) -> Self {
        let e = anyhow!("{what} → HTTP {} — {}", resp.status, resp.body_snippet());
        if resp.status.is_client_error() && resp.status != StatusCode::TOO_MANY_REQUESTS {
            Self::Fatal(e)
        } else {
            Self::Transient(e)
        }
    }
}

impl Creator {
    /// Creates `agent-<i>` and returns its own token and its id, retrying transient failures.
    async fn create(
        &self,
        conn: &mut Conn,
        i: usize,
        retries: &AtomicUsize,
    ) -> Result<(HeaderValue, String)> {
        let mut last_err = anyhow!("no attempt made");
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let created = match self.mode {
                SeedMode::Enroll => self.enroll(conn, i).await,
                SeedMode::Admin => self.admin_create(conn, i).await,
            };
            let made = match created {
                Ok(made) => made,
                Err(Failure::Transient(e)) => {
                    last_err = e;
                    continue;
                }
                Err(Failure::Fatal(e)) => return Err(e),
            };
            return Ok(made);
        }
        Err(last_err)
    }

    /// `POST /api/v1/agents/heartbeat` with the enrollment token.
    async fn enroll(&self, conn: &mut Conn, i: usize) -> Result<(HeaderValue, String), Failure> {
        let what = format!("enrolling agent-{i}: POST /api/v1/agents/heartbeat");
        let resp = conn
            .json(
                Method::POST,
                "/api/v1/agents/heartbeat",
                &[(AGENT_TOKEN_HEADER, &self.enrollment)],
                &json!({ "name": format!("agent-{i}") }),
            )
            .await
            .map_err(|e| Failure::Transient(e.context(what.clone())))?;
        if !resp.status.is_success() {
            return Err(Failure::of_status(&what, &resp));
        }
        let token = resp
            .headers
            .get(AGENT_TOKEN_HEADER)
            .cloned()
            .ok_or_else(|| {
                Failure::Fatal(anyhow!(
                    "{what}: HTTP {} without an X-Agent-Token response header; body: {}",
                    resp.status,
                    resp.body_snippet()
                ))
            })?;
        let id = expect_field(&what, &resp, "id").map_err(Failure::Fatal)?;
        Ok((token, id))
    }

    /// `POST /api/v1/agents`, then `POST /api/v1/agents/{id}/token`, with the admin token.
    async fn admin_create(
        &self,
        conn: &mut Conn,
        i: usize,
    ) -> Result<(HeaderValue, String), Failure> {
        let auth = [(AUTHORIZATION.as_str(), &self.admin)];
        let name = format!("agent-{i}");
        let what = format!("creating {name}: POST /api/v1/agents");
        let resp = conn
            .json(
                Method::POST,
                "/api/v1/agents",
                &auth,
                &json!({ "name": name, "board_id": self.board_id }),
            )
            .await
            .map_err(|e| Failure::Transient(e.context(what.clone())))?;
        let id = if resp.status == StatusCode::CONFLICT {
            // A retry after a lost response: the agent exists; find its id.
            self.find_agent_id(conn, &name).await?
        } else if resp.status.is_success() {
            expect_field(&what, &resp, "id").map_err(Failure::Fatal)?
        } else {
            return Err(Failure::of_status(&what, &resp));
        };
        let path = format!("/api/v1/agents/{id}/token");
        let what = format!("creating {name}: POST {path}");
        let resp = conn
            .json(Method::POST, &path, &auth, &json!({}))
            .await
            .map_err(|e| Failure::Transient(e.context(what.clone())))?;
        if !resp.status.is_success() {
            return Err(Failure::of_status(&what, &resp));
        }
        let token = expect_field(&what, &resp, "token").map_err(Failure::Fatal)?;
        let token = HeaderValue::from_str(&token)
            .map_err(|_| Failure::Fatal(anyhow!("{what}: token is not a valid header value")))?;
        Ok((token, id))
    }

    /// The id of the agent named `name` on the bench board (pages through the board).
    async fn find_agent_id(&self, conn: &mut Conn, name: &str) -> Result<String, Failure> {
        let mut offset = 0;
        loop {
            let path = format!(
                "/api/v1/agents?board_id={}&limit=200&offset={offset}",
                self.board_id
            );
            let what = format!("looking up {name}: GET {path}");
            let req = hyper::Request::builder()
                .method(Method::GET)
                .uri(&path)
                .header(hyper::header::HOST, conn.host().clone())
                .header(AUTHORIZATION, self.admin.clone())
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .map_err(|e| Failure::Fatal(e.into()))?;
            let resp = conn
                .send(req)
                .await
                .map_err(|e| Failure::Transient(e.context(what.clone())))?;
            if !resp.status.is_success() {
                return Err(Failure::of_status(&what, &resp));
            }
            let page = resp.json().map_err(Failure::Fatal)?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if let Some(id) = items
                .iter()
                .find(|a| a["name"] == name)
                .and_then(|a| a["id"].as_str())
            {
                return Ok(id.to_owned());
            }
            if items.len() < 200 {
                return Err(Failure::Fatal(anyhow!(
                    "{name}: 409 on create but not found on the board"
                )));
            }
            offset += 200;
        }
    }
}

/// One `POST /api/v1/agent/heartbeat` with the agent's own token, expecting 200.
async fn prime(conn: &mut Conn, token: &HeaderValue, i: usize) -> Result<(), Failure> {
    let what = format!("priming agent-{i}: POST /api/v1/agent/heartbeat");
    let req = hyper::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/agent/heartbeat")
        .header(hyper::header::HOST, conn.host().clone())
        .header(hyper::header::CONTENT_LENGTH, HeaderValue::from_static("0"))
        .header(AGENT_TOKEN_HEADER, token.clone())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| Failure::Fatal(e.into()))?;
    let resp = conn
        .send(req)
        .await
        .map_err(|e| Failure::Transient(e.context(what.clone())))?;
    if resp.status == StatusCode::OK {
        Ok(())
    } else {
        Err(Failure::of_status(&what, &resp))
    }
}
