//! The closed-loop load generator: keep-alive connections with one request in flight each,
//! spread over the replicas (connection `k` talks to replica `k mod n`), for one or more
//! workloads at once (e.g. agent listings under heartbeat load). A run is started, then
//! stopped after a fixed time or when the caller is done (the offline-deadline phase).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tokio::task::JoinSet;

use crate::http::Conn;
use crate::procfs::{self, PgProcesses};
use crate::seed::AGENT_TOKEN_HEADER;

/// The path of the agent listing the issue names.
pub const AGENTS_LIST_PATH: &str = "/api/v1/agents?limit=200";

/// A server process under load.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id (for CPU time).
    pub pid: u32,
}

/// What a workload requests.
#[derive(Clone)]
pub enum Target {
    /// `GET /healthz`.
    Healthz,
    /// `POST /api/v1/agent/heartbeat`, empty body, `X-Agent-Token` rotating over these tokens.
    Heartbeat(Arc<Vec<HeaderValue>>),
    /// `GET /api/v1/agents?limit=200` with this `Authorization` value (the admin's bearer token).
    AgentsList(HeaderValue),
}

impl Target {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Healthz => "GET /healthz",
            Self::Heartbeat(_) => "POST /agent/heartbeat",
            Self::AgentsList(_) => "GET /agents?limit=200",
        }
    }

    fn request(&self, host: &HeaderValue, i: usize) -> Result<Request<Full<Bytes>>> {
        let req = match self {
            Self::Healthz => Request::builder()
                .method(Method::GET)
                .uri("/healthz")
                .header(HOST, host.clone()),
            Self::Heartbeat(tokens) => Request::builder()
                .method(Method::POST)
                .uri("/api/v1/agent/heartbeat")
                .header(HOST, host.clone())
                .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
                .header(AGENT_TOKEN_HEADER, tokens[i % tokens.len()].clone()),
            Self::AgentsList(auth) => Request::builder()
                .method(Method::GET)
                .uri(AGENTS_LIST_PATH)
                .header(HOST, host.clone())
                .header(AUTHORIZATION, auth.clone()),
        };
        Ok(req.body(Full::new(Bytes::new()))?)
    }

    fn rotation_len(&self) -> usize {
        match self {
            Self::Healthz | Self::AgentsList(_) => 1,
            Self::Heartbeat(t) => t.len().max(1),
        }
    }
}

/// One kind of request driven over its own connections.
#[derive(Clone)]
pub struct Workload {
    /// What is requested.
    pub target: Target,
    /// Concurrent connections (spread over the replicas).
    pub connections: usize,
}

/// Settings shared by all phases.
#[derive(Debug, Clone, Copy)]
pub struct PhaseConfig {
    /// Concurrent connections of the heartbeat and `/healthz` phases.
    pub connections: usize,
    /// Unmeasured time at the start of the phase.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Bound on each request.
    pub request_timeout: Duration,
}

/// Which processes' CPU time a phase reads.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    /// The server processes, in replica order.
    pub servers: Vec<u32>,
    /// The PostgreSQL server's processes, when the backend is PostgreSQL.
    pub pg: Option<PgProcesses>,
}

/// CPU times read at one instant.
#[derive(Debug, Clone)]
struct CpuSnapshot {
    servers: Vec<Option<Duration>>,
    pg: Option<Duration>,
    loadgen: Option<Duration>,
    machine: Option<Duration>,
}

impl CpuProbe {
    fn read(&self) -> CpuSnapshot {
        CpuSnapshot {
            servers: self
                .servers
                .iter()
                .map(|pid| procfs::cpu_time(&pid.to_string()))
                .collect(),
            pg: self.pg.and_then(PgProcesses::cpu_time),
            loadgen: procfs::cpu_time("self"),
            machine: procfs::machine_cpu().map(|(busy, _)| busy),
        }
    }
}

/// CPU time used between two snapshots.
#[derive(Debug, Clone, Default)]
struct CpuUsed {
    servers: Vec<Option<Duration>>,
    pg: Option<Duration>,
    loadgen: Option<Duration>,
    machine: Option<Duration>,
}

impl CpuUsed {
    fn between(a: &CpuSnapshot, b: &CpuSnapshot) -> Self {
        let diff = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        Self {
            servers: a
                .servers
                .iter()
                .zip(&b.servers)
                .map(|(x, y)| diff(*x, *y))
                .collect(),
            pg: diff(a.pg, b.pg),
            loadgen: diff(a.loadgen, b.loadgen),
            machine: diff(a.machine, b.machine),
        }
    }
}

fn add(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(a? + b?)
}

/// One replica's part of a phase.
pub struct ReplicaShare {
    /// Connections that talked to it.
    pub connections: usize,
    /// Successful responses in the window.
    pub ok: u64,
    /// Failures in the window.
    pub errors: u64,
    /// Latency of its successful requests, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Its server process's CPU time in the window.
    pub server_cpu: Option<Duration>,
}

/// Figures of one measured phase (one workload).
pub struct PhaseResult {
    /// What was requested.
    pub target: &'static str,
    /// Concurrent connections of this workload.
    pub connections: usize,
    /// Length of the measured window.
    pub window: Duration,
    /// Responses with the expected status inside the window.
    pub ok: u64,
    /// Wrong statuses, transport errors and timeouts inside the window.
    pub errors: u64,
    /// Error counts by kind (`HTTP 500`, `transport`, `timeout`).
    pub error_kinds: BTreeMap<String, u64>,
    /// First error seen, with detail.
    pub first_error: Option<String>,
    /// Latency of successful requests in the window, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Per replica, in replica order.
    pub replicas: Vec<ReplicaShare>,
    /// CPU time of all server processes during the window.
    pub server_cpu: Option<Duration>,
    /// CPU time of PostgreSQL's processes during the window (PostgreSQL backend only).
    pub pg_cpu: Option<Duration>,
    /// Load generator (this process) CPU time during the window.
    pub loadgen_cpu: Option<Duration>,
    /// CPU time of the whole machine (all processes) during the window.
    pub machine_cpu: Option<Duration>,
    /// Requests per second of each round merged into this result.
    pub round_rps: Vec<f64>,
}

impl PhaseResult {
    /// Adds another round of the same phase: counts, windows, CPU times and histograms sum.
    pub fn merge(&mut self, other: Self) -> Result<()> {
        self.window += other.window;
        self.ok += other.ok;
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency
            .add(&other.latency)
            .context("merging histograms")?;
        for (mine, theirs) in self.replicas.iter_mut().zip(other.replicas) {
            mine.ok += theirs.ok;
            mine.errors += theirs.errors;
            mine.latency
                .add(&theirs.latency)
                .context("merging histograms")?;
            mine.server_cpu = add(mine.server_cpu, theirs.server_cpu);
        }
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.pg_cpu = match (self.pg_cpu, other.pg_cpu) {
            (None, None) => None,
            (a, b) => add(a, b),
        };
        self.loadgen_cpu = add(self.loadgen_cpu, other.loadgen_cpu);
        self.machine_cpu = add(self.machine_cpu, other.machine_cpu);
        self.round_rps.extend(other.round_rps);
        Ok(())
    }

    /// Lowest and highest per-round requests per second.
    pub fn spread(&self) -> (f64, f64) {
        let min = self.round_rps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.round_rps.iter().copied().fold(0.0, f64::max);
        (min, max)
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Successful requests per second answered by replica `r`.
    pub fn replica_rps(&self, r: usize) -> f64 {
        self.replicas
            .get(r)
            .map_or(0.0, |s| s.ok as f64 / self.window.as_secs_f64().max(1e-9))
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e6
    }

    /// Maximum latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1e6
    }

    /// CPU time as a percentage of one core over the window.
    pub fn cpu_pct(&self, cpu: Option<Duration>) -> Option<f64> {
        cpu.map(|c| 100.0 * c.as_secs_f64() / self.window.as_secs_f64().max(1e-9))
    }

    /// CPU time used by other processes than the servers, PostgreSQL and the load generator.
    pub fn other_cpu(&self) -> Option<Duration> {
        Some(
            self.machine_cpu?
                .saturating_sub(self.server_cpu?)
                .saturating_sub(self.pg_cpu.unwrap_or_default())
                .saturating_sub(self.loadgen_cpu?),
        )
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 60 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).context("histogram")
}

/// What one connection task brings back.
struct ConnResult {
    workload: usize,
    replica: usize,
    ok: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

/// Sends one request to every endpoint and checks that each gets a 200, with the body in
/// the error otherwise.
pub async fn preflight(endpoints: &[Endpoint], target: &Target, timeout: Duration) -> Result<()> {
    for (r, e) in endpoints.iter().enumerate() {
        let mut c = Conn::new(e.addr, timeout);
        let req = target.request(c.host(), r)?;
        let resp = c
            .send(req)
            .await
            .with_context(|| format!("preflight {} on {}", target.name(), e.addr))?;
        if resp.status != StatusCode::OK {
            bail!(
                "preflight {} on {}: HTTP {} (expected 200) — {}",
                target.name(),
                e.addr,
                resp.status,
                resp.body_snippet()
            );
        }
    }
    Ok(())
}

/// A load run in progress.
pub struct Running {
    tasks: JoinSet<ConnResult>,
    stop: Arc<AtomicBool>,
    measure_from: Instant,
    first_cpu: tokio::task::JoinHandle<CpuSnapshot>,
    probe: CpuProbe,
    workloads: Vec<Workload>,
    replicas: usize,
    request_timeout: Duration,
}

/// Opens every connection, then starts driving requests; the window is measured from
/// `warmup` after the start until [`Running::stop`].
pub async fn start(
    endpoints: &[Endpoint],
    workloads: Vec<Workload>,
    warmup: Duration,
    request_timeout: Duration,
    probe: CpuProbe,
) -> Result<Running> {
    if endpoints.is_empty() {
        bail!("no server to load");
    }
    // Open every connection before the clock starts.
    let mut conns = Vec::new();
    for (w, workload) in workloads.iter().enumerate() {
        for k in 0..workload.connections {
            let replica = k % endpoints.len();
            let mut c = Conn::new(endpoints[replica].addr, request_timeout);
            c.connect().await?;
            conns.push((w, k, replica, c));
        }
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let stop = Arc::new(AtomicBool::new(false));

    let mut tasks = JoinSet::new();
    for (w, k, replica, mut conn) in conns {
        let target = workloads[w].target.clone();
        let n = workloads[w].connections;
        let rotation = target.rotation_len();
        let mut hist = new_histogram()?;
        let stop = stop.clone();
        tasks.spawn(async move {
            // Each connection walks the agents round-robin from its own offset.
            let mut i = k * rotation / n;
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut first_error = None;
            let host = conn.host().clone();
            tokio::time::sleep_until(start.into()).await;
            loop {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let t0 = Instant::now();
                let req = match target.request(&host, i) {
                    Ok(r) => r,
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        break;
                    }
                };
                i = i.wrapping_add(1);
                let res = conn.send(req).await;
                let t1 = Instant::now();
                let counted = t0 >= measure_from && !stop.load(Ordering::Acquire);
                let failure = match res {
                    Ok(r) if r.status == StatusCode::OK => {
                        if counted {
                            ok += 1;
                            hist.saturating_record((t1 - t0).as_nanos() as u64);
                        }
                        None
                    }
                    Ok(r) => Some((
                        format!("HTTP {}", r.status.as_u16()),
                        format!("HTTP {} — {}", r.status, r.body_snippet()),
                    )),
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let kind = if msg.contains("timed out") {
                            "timeout"
                        } else {
                            "transport"
                        };
                        Some((kind.to_owned(), msg))
                    }
                };
                if let Some((kind, detail)) = failure {
                    if counted {
                        *errors.entry(kind.clone()).or_default() += 1;
                    }
                    first_error.get_or_insert(detail);
                    if kind == "transport" {
                        // Don't spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            ConnResult {
                workload: w,
                replica,
                ok,
                errors,
                first_error,
                latency: hist,
            }
        });
    }

    let first_cpu = {
        let probe = probe.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            probe.read()
        })
    };
    Ok(Running {
        tasks,
        stop,
        measure_from,
        first_cpu,
        probe,
        workloads,
        replicas: endpoints.len(),
        request_timeout,
    })
}

impl Running {
    /// When the measured window starts.
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// Ends the window now and collects one result per workload, in workload order.
    pub async fn stop(mut self) -> Result<Vec<PhaseResult>> {
        // A stop before the window opened still measures a (tiny) window.
        tokio::time::sleep_until(self.measure_from.into()).await;
        let first = (&mut self.first_cpu)
            .await
            .map_err(|e| anyhow!("CPU probe failed: {e}"))?;
        let last = self.probe.read();
        let ended_at = Instant::now();
        self.stop.store(true, Ordering::Release);
        let window = ended_at
            .saturating_duration_since(self.measure_from)
            .max(Duration::from_millis(1));
        let cpu = CpuUsed::between(&first, &last);

        let mut results = Vec::with_capacity(self.workloads.len());
        for w in &self.workloads {
            let mut replicas = Vec::with_capacity(self.replicas);
            for r in 0..self.replicas {
                replicas.push(ReplicaShare {
                    connections: (0..w.connections)
                        .filter(|k| k % self.replicas == r)
                        .count(),
                    ok: 0,
                    errors: 0,
                    latency: new_histogram()?,
                    server_cpu: cpu.servers.get(r).copied().flatten(),
                });
            }
            results.push(PhaseResult {
                target: w.target.name(),
                connections: w.connections,
                window,
                ok: 0,
                errors: 0,
                error_kinds: BTreeMap::new(),
                first_error: None,
                latency: new_histogram()?,
                replicas,
                server_cpu: cpu
                    .servers
                    .iter()
                    .copied()
                    .try_fold(Duration::ZERO, |sum, one| Some(sum + one?)),
                pg_cpu: cpu.pg,
                loadgen_cpu: cpu.loadgen,
                machine_cpu: cpu.machine,
                round_rps: Vec::new(),
            });
        }

        let hard_limit = self.request_timeout * 2 + Duration::from_secs(5);
        let joined = tokio::time::timeout(hard_limit, async {
            while let Some(r) = self.tasks.join_next().await {
                let r = r.map_err(|e| anyhow!("load task failed: {e}"))?;
                let res = &mut results[r.workload];
                res.ok += r.ok;
                let errors: u64 = r.errors.values().sum();
                res.errors += errors;
                for (k, v) in r.errors {
                    *res.error_kinds.entry(k).or_default() += v;
                }
                if res.first_error.is_none() {
                    res.first_error = r.first_error;
                }
                res.latency.add(&r.latency).context("merging histograms")?;
                let share = &mut res.replicas[r.replica];
                share.ok += r.ok;
                share.errors += errors;
                share
                    .latency
                    .add(&r.latency)
                    .context("merging histograms")?;
            }
            anyhow::Ok(())
        })
        .await;
        match joined {
            Ok(r) => r?,
            Err(_) => {
                self.tasks.abort_all();
                bail!("the load did not stop within {hard_limit:?}");
            }
        }
        for res in &mut results {
            res.round_rps = vec![res.ok as f64 / window.as_secs_f64()];
        }
        Ok(results)
    }
}

/// Runs workloads for `cfg.warmup + cfg.duration` and returns one result per workload.
pub async fn run_phase(
    endpoints: &[Endpoint],
    workloads: Vec<Workload>,
    cfg: PhaseConfig,
    probe: CpuProbe,
) -> Result<Vec<PhaseResult>> {
    let running = start(endpoints, workloads, cfg.warmup, cfg.request_timeout, probe).await?;
    let end = running.measure_from() + cfg.duration;
    tokio::time::sleep_until(end.into()).await;
    running.stop().await
}
