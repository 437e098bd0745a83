//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Request metrics are recorded by the request middleware: one latency histogram and one
//! counter per status class for each route and method, all plain atomics (no lock on the
//! request path once a route has been seen). Fleet figures (agents by status, the write
//! queue, database pools) are read when scraped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use dashmap::DashMap;
use mc_domain::agent::AgentStatus;
use mc_domain::time::Timestamp;

use crate::liveness::status_index;
use crate::state::SharedState;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The methods tracked separately; anything else counts as `OTHER`.
const METHODS: [&str; 6] = ["GET", "POST", "PATCH", "PUT", "DELETE", "OTHER"];

/// The status classes counted: 1xx to 5xx.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PATCH => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        _ => 5,
    }
}

/// A latency histogram: cumulative counts are derived when rendered.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(slot) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// One route and method: its latency and its responses by status class.
#[derive(Debug, Default)]
struct Endpoint {
    latency: Histogram,
    statuses: [AtomicU64; STATUS_CLASSES.len()],
}

/// Every endpoint of one route, by method.
#[derive(Debug, Default)]
struct RouteMetrics {
    methods: [Endpoint; METHODS.len()],
}

/// The server's counters. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: DashMap<String, Arc<RouteMetrics>>,
    /// Provisioning job attempts by outcome.
    pub provision: JobOutcomes,
    /// Webhook delivery attempts by outcome.
    pub webhooks: JobOutcomes,
    stream_clients: AtomicI64,
}

/// Outcomes of job attempts since start: done, retrying (failed, will retry), failed (for good).
#[derive(Debug, Default)]
pub struct JobOutcomes {
    done: AtomicU64,
    retrying: AtomicU64,
    failed: AtomicU64,
}

impl JobOutcomes {
    /// Counts one attempt that left its job done, retrying or failed for good.
    pub fn count(&self, outcome: JobOutcome) {
        let counter = match outcome {
            JobOutcome::Done => &self.done,
            JobOutcome::Retrying => &self.retrying,
            JobOutcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(outcome, count)` pairs, the done outcome named `done_label`.
    fn snapshot(&self, done_label: &'static str) -> [(&'static str, u64); 3] {
        [
            (done_label, self.done.load(Ordering::Relaxed)),
            ("retrying", self.retrying.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

/// Where a job attempt left its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Finished.
    Done,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Failed for good.
    Failed,
}

/// Counts an open event stream while it lives.
#[derive(Debug)]
pub struct StreamClientGuard(Arc<Metrics>);

impl Drop for StreamClientGuard {
    fn drop(&mut self) {
        self.0.stream_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

const STATUSES: [AgentStatus; 6] = AgentStatus::ALL;

impl Metrics {
    /// Records one answered request of `route` (the matched path pattern).
    pub fn observe_request(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let metrics = match self.routes.get(route) {
            Some(metrics) => Arc::clone(&metrics),
            None => Arc::clone(&self.routes.entry(route.to_owned()).or_default()),
        };
        let endpoint = &metrics.methods[method_slot(method)];
        endpoint.latency.observe(elapsed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        endpoint.statuses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an event stream as open until the guard drops.
    pub fn stream_opened(self: &Arc<Self>) -> StreamClientGuard {
        self.stream_clients.fetch_add(1, Ordering::Relaxed);
        StreamClientGuard(Arc::clone(self))
    }

    fn render_requests(&self, out: &mut String) {
        let mut routes: Vec<(String, Arc<RouteMetrics>)> = self
            .routes
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            out,
            "mc_http_requests_total",
            "counter",
            "HTTP responses by route, method and status class.",
        );
        for (route, metrics) in &routes {
            for (method, endpoint) in METHODS.iter().zip(&metrics.methods) {
                for (class, count) in STATUS_CLASSES.iter().zip(&endpoint.statuses) {
                    let count = count.load(Ordering::Relaxed);
                    if count > 0 {
                        let _ = writeln!(
                            out,
                            "mc_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{class}\"}} {count}",
                            escape(route)
                        );
                    }
                }
            }
        }
        header(
            out,
            "mc_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route and method.",
        );
        for (route, metrics) in &routes {
            for (method, endpoint) in METHODS.iter().zip(&metrics.methods) {
                let histogram = &endpoint.latency;
                let count = histogram.count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let labels = format!("route=\"{}\",method=\"{method}\"", escape(route));
                let mut cumulative = 0;
                for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&histogram.buckets) {
                    cumulative += bucket.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "mc_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "mc_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
                );
                let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                let _ = writeln!(
                    out,
                    "mc_http_request_duration_seconds_sum{{{labels}}} {sum}"
                );
                let _ = writeln!(
                    out,
                    "mc_http_request_duration_seconds_count{{{labels}}} {count}"
                );
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition for the server's current state.
pub async fn render(state: &SharedState) -> String {
    let metrics = &state.metrics;
    let mut out = String::with_capacity(8 * 1024);
    metrics.render_requests(&mut out);

    header(
        &mut out,
        "mc_heartbeats_total",
        "counter",
        "Heartbeats accepted (rate() gives heartbeats per second).",
    );
    let _ = writeln!(
        out,
        "mc_heartbeats_total {}",
        state.registry.heartbeats_accepted()
    );

    header(&mut out, "mc_agents", "gauge", "Agents by computed status.");
    let counts = state.registry.count_by_status(Timestamp::now());
    for status in STATUSES {
        let _ = writeln!(
            out,
            "mc_agents{{status=\"{}\"}} {}",
            status.as_str(),
            counts[status_index(status)]
        );
    }

    header(
        &mut out,
        "mc_liveness_transitions_total",
        "counter",
        "Liveness transitions recorded by this process, by new status.",
    );
    let transitions = state.registry.transitions();
    // Job states (updating, deleting) are never transitions.
    for status in STATUSES.into_iter().filter(|s| !s.is_lifecycle_overlay()) {
        let _ = writeln!(
            out,
            "mc_liveness_transitions_total{{to=\"{}\"}} {}",
            status.as_str(),
            transitions[status_index(status)]
        );
    }

    header(
        &mut out,
        "mc_leader",
        "gauge",
        "1 while this replica does the singleton work (offline detection) for all replicas.",
    );
    let _ = writeln!(out, "mc_leader {}", u8::from(state.engine.leading()));

    header(
        &mut out,
        "mc_feed_reads_total",
        "counter",
        "Database reads made to follow other replicas' events: agents (one per batch of events), log (pages of missed events), reload (every agent again).",
    );
    let feed = state.engine.feed_reads();
    for (read, count) in [
        ("agents", feed.agent_reads),
        ("log", feed.log_reads),
        ("reload", feed.reloads),
    ] {
        let _ = writeln!(out, "mc_feed_reads_total{{read=\"{read}\"}} {count}");
    }

    header(
        &mut out,
        "mc_liveness_pending_writes",
        "gauge",
        "Agents whose liveness fields wait for the next write-behind batch.",
    );
    let _ = writeln!(
        out,
        "mc_liveness_pending_writes {}",
        state.registry.pending_writes()
    );

    header(
        &mut out,
        "mc_event_stream_clients",
        "gauge",
        "Open server-sent event streams.",
    );
    let _ = writeln!(
        out,
        "mc_event_stream_clients {}",
        metrics.stream_clients.load(Ordering::Relaxed)
    );

    header(
        &mut out,
        "mc_webhook_deliveries_total",
        "counter",
        "Webhook delivery attempts by outcome (retrying: failed, will retry; failed: given up).",
    );
    for (outcome, count) in metrics.webhooks.snapshot("delivered") {
        let _ = writeln!(
            out,
            "mc_webhook_deliveries_total{{outcome=\"{outcome}\"}} {count}"
        );
    }

    // The queue depth needs the database; when it does not answer, the sample is left out
    // (the request metrics above still say what is wrong).
    header(
        &mut out,
        "mc_provision_jobs_total",
        "counter",
        "Provisioning job attempts by outcome (retrying: failed, will retry; failed: for good).",
    );
    for (outcome, count) in metrics.provision.snapshot("done") {
        let _ = writeln!(
            out,
            "mc_provision_jobs_total{{outcome=\"{outcome}\"}} {count}"
        );
    }

    header(
        &mut out,
        "mc_job_queue_depth",
        "gauge",
        "Jobs waiting, by kind.",
    );
    if let Ok(pending) = state.store.pending_deliveries().await {
        let _ = writeln!(
            out,
            "mc_job_queue_depth{{kind=\"webhook_delivery\"}} {pending}"
        );
    }
    if let Ok(pending) = state.store.pending_provision_jobs().await {
        let _ = writeln!(out, "mc_job_queue_depth{{kind=\"provision\"}} {pending}");
    }

    header(
        &mut out,
        "mc_db_pool_connections",
        "gauge",
        "Database connections by pool and state.",
    );
    header(
        &mut out,
        "mc_db_pool_max_connections",
        "gauge",
        "Database pool capacity.",
    );
    for pool in state.store.pool_stats() {
        let busy = pool.size.saturating_sub(pool.idle);
        let _ = writeln!(
            out,
            "mc_db_pool_connections{{pool=\"{}\",state=\"busy\"}} {busy}",
            pool.name
        );
        let _ = writeln!(
            out,
            "mc_db_pool_connections{{pool=\"{}\",state=\"idle\"}} {}",
            pool.name, pool.idle
        );
        let _ = writeln!(
            out,
            "mc_db_pool_max_connections{{pool=\"{}\"}} {}",
            pool.name, pool.max
        );
    }
    out
}

/// Serves the exposition (no authentication, like `/healthz`: it holds no secrets).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format 0.0.4")))]
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state).await,
    )
}
