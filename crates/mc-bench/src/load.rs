//! The closed-loop load generator: N keep-alive connections, one request in flight each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::header::{CONTENT_LENGTH, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tokio::task::JoinSet;

use crate::http::Conn;
use crate::procfs;
use crate::seed::AGENT_TOKEN_HEADER;

/// What a phase requests.
#[derive(Clone)]
pub enum Target {
    /// `GET /healthz`.
    Healthz,
    /// `POST /api/v1/agent/heartbeat`, empty body, `X-Agent-Token` rotating over these tokens.
    Heartbeat(Arc<Vec<HeaderValue>>),
}

impl Target {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Healthz => "GET /healthz",
            Self::Heartbeat(_) => "POST /agent/heartbeat",
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
        };
        Ok(req.body(Full::new(Bytes::new()))?)
    }

    fn rotation_len(&self) -> usize {
        match self {
            Self::Healthz => 1,
            Self::Heartbeat(t) => t.len().max(1),
        }
    }
}

/// Settings shared by all phases.
#[derive(Debug, Clone, Copy)]
pub struct PhaseConfig {
    /// Concurrent connections.
    pub connections: usize,
    /// Unmeasured time at the start of the phase.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Bound on each request.
    pub request_timeout: Duration,
}

/// Figures of one measured phase.
pub struct PhaseResult {
    /// What was requested.
    pub target: &'static str,
    /// Concurrent connections.
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
    /// Server CPU time during the window.
    pub server_cpu: Option<Duration>,
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
        let add = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
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
        self.server_cpu = add(self.server_cpu, other.server_cpu);
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
        self.ok as f64 / self.window.as_secs_f64()
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
        cpu.map(|c| 100.0 * c.as_secs_f64() / self.window.as_secs_f64())
    }

    /// CPU time used by other processes than the server and the load generator.
    pub fn other_cpu(&self) -> Option<Duration> {
        Some(
            self.machine_cpu?
                .saturating_sub(self.server_cpu?)
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
    ok: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

/// Sends one request and checks that it gets a 200, with the body in the error otherwise.
pub async fn preflight(addr: SocketAddr, target: &Target, timeout: Duration) -> Result<()> {
    let mut c = Conn::new(addr, timeout);
    let req = target.request(c.host(), 0)?;
    let resp = c
        .send(req)
        .await
        .with_context(|| format!("preflight {}", target.name()))?;
    if resp.status != StatusCode::OK {
        bail!(
            "preflight {}: HTTP {} (expected 200) — {}",
            target.name(),
            resp.status,
            resp.body_snippet()
        );
    }
    Ok(())
}

/// Runs one phase: connects all connections, then drives requests for warmup + duration.
pub async fn run_phase(
    addr: SocketAddr,
    target: Target,
    cfg: PhaseConfig,
    server_pid: u32,
) -> Result<PhaseResult> {
    // Open every connection before the clock starts.
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let mut c = Conn::new(addr, cfg.request_timeout);
        c.connect().await?;
        conns.push(c);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let rotation = target.rotation_len();
    let n = cfg.connections;

    let mut tasks = JoinSet::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let target = target.clone();
        let mut hist = new_histogram()?;
        tasks.spawn(async move {
            // Each connection walks the agents round-robin from its own offset.
            let mut i = k * rotation / n;
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut first_error = None;
            let host = conn.host().clone();
            tokio::time::sleep_until(start.into()).await;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
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
                let counted = t0 >= measure_from && t1 <= end;
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
                ok,
                errors,
                first_error,
                latency: hist,
            }
        });
    }

    // CPU snapshots at the edges of the measured window.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let s0 = procfs::cpu_time(&server_pid.to_string());
        let l0 = procfs::cpu_time("self");
        let m0 = procfs::machine_cpu().map(|(busy, _)| busy);
        tokio::time::sleep_until(end.into()).await;
        let s1 = procfs::cpu_time(&server_pid.to_string());
        let l1 = procfs::cpu_time("self");
        let m1 = procfs::machine_cpu().map(|(busy, _)| busy);
        let diff = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        (diff(s0, s1), diff(l0, l1), diff(m0, m1))
    });

    let mut latency = new_histogram()?;
    let mut ok = 0;
    let mut error_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error = None;
    let hard_limit = cfg.warmup + cfg.duration + cfg.request_timeout * 2 + Duration::from_secs(5);
    let joined = tokio::time::timeout(hard_limit, async {
        while let Some(r) = tasks.join_next().await {
            let r = r.map_err(|e| anyhow!("load task failed: {e}"))?;
            ok += r.ok;
            for (k, v) in r.errors {
                *error_kinds.entry(k).or_default() += v;
            }
            if first_error.is_none() {
                first_error = r.first_error;
            }
            latency.add(&r.latency).context("merging histograms")?;
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => {
            tasks.abort_all();
            bail!("phase {} did not stop within {hard_limit:?}", target.name());
        }
    }
    let (server_cpu, loadgen_cpu, machine_cpu) = cpu.await.unwrap_or((None, None, None));
    let round_rps = vec![ok as f64 / cfg.duration.as_secs_f64()];
    Ok(PhaseResult {
        target: target.name(),
        connections: cfg.connections,
        window: cfg.duration,
        ok,
        errors: error_kinds.values().sum(),
        error_kinds,
        first_error,
        latency,
        server_cpu,
        loadgen_cpu,
        machine_cpu,
        round_rps,
    })
}
