//! Human-readable and markdown reports, and the verdicts against the issues' targets.

use std::fmt::Write as _;
use std::time::Duration;

use crate::deadline::DeadlineResult;
use crate::load::{PhaseConfig, PhaseResult};
use crate::procfs::{MachineFacts, Memory, Stages};
use crate::seed::{SeedMode, SeedStats};

/// Heartbeat throughput must reach this share of the `/healthz` baseline (issue 2).
pub const TARGET_RATIO_PCT: f64 = 40.0;
/// Heartbeat p99 bound, in milliseconds, at 64 connections (issue 2).
pub const TARGET_P99_MS: f64 = 10.0;
/// Connection count at which the p99 target applies.
pub const TARGET_P99_CONNECTIONS: usize = 64;
/// "No drop" when agents grow: the largest step keeps at least this share of the smallest
/// step's heartbeat throughput (allowing for run-to-run noise).
pub const TARGET_SCALING_PCT: f64 = 90.0;
/// Heartbeats per second each replica must answer on PostgreSQL (issue 4).
pub const TARGET_PG_RPS_PER_REPLICA: f64 = 20_000.0;
/// Resident memory bound per server process, bytes: 200 MB (issue 4).
pub const TARGET_RSS_BYTES: u64 = 200_000_000;
/// p99 from an agent's deadline to its offline event at an SSE client, ms (issue 4).
pub const TARGET_DEADLINE_P99_MS: f64 = 1_000.0;
/// p99 of `GET /api/v1/agents?limit=200`, ms (issue 4).
pub const TARGET_LIST_P99_MS: f64 = 20.0;

/// The database the servers ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// SQLite in each server's temporary data directory (one replica).
    Sqlite,
    /// One PostgreSQL shared by every replica.
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// Measurements at one agent count.
pub struct StepReport {
    /// Agents registered on the server.
    pub agents: usize,
    /// Seeding round that brought the server to `agents`.
    pub seed: SeedStats,
    /// Each replica's memory right after seeding.
    pub mem_after_seed: Vec<Option<Memory>>,
    /// Each replica's memory after the heartbeat phases.
    pub mem_after_heartbeat: Vec<Option<Memory>>,
    /// Each replica's memory after every phase of the step (its peak covers the whole run).
    pub mem_end: Vec<Option<Memory>>,
    /// Size of the database on disk after the step (SQLite files, or the PostgreSQL cluster).
    pub data_bytes: Option<u64>,
    /// Wall time of the refresh pass (one heartbeat per agent) before the phases.
    pub refresh: Option<Duration>,
    /// Activity events (status transitions) recorded on the board during the heartbeat phases.
    pub events_during_phases: Option<u64>,
    /// `/healthz` baseline.
    pub healthz: PhaseResult,
    /// Heartbeat phase.
    pub heartbeat: PhaseResult,
    /// `GET /api/v1/agents?limit=200` alone.
    pub list_alone: Option<PhaseResult>,
    /// The same under the heartbeat load: (listing, heartbeats).
    pub list_loaded: Option<(PhaseResult, PhaseResult)>,
    /// The offline-deadline phase.
    pub deadline: Option<DeadlineResult>,
}

impl StepReport {
    /// Heartbeat throughput as a percentage of the `/healthz` baseline.
    pub fn ratio_pct(&self) -> f64 {
        100.0 * self.heartbeat.rps() / self.healthz.rps().max(1e-9)
    }

    /// Replica `r`'s peak resident memory so far (`VmHWM` at the end of the step).
    fn peak_kib(&self, r: usize) -> Option<u64> {
        [
            &self.mem_end,
            &self.mem_after_heartbeat,
            &self.mem_after_seed,
        ]
        .iter()
        .filter_map(|m| m.get(r).copied().flatten())
        .map(|m| m.hwm_kib)
        .max()
    }
}

/// Everything the run produced.
pub struct Report {
    /// Machine facts.
    pub facts: MachineFacts,
    /// The command line to reproduce the run.
    pub command: String,
    /// Phase settings.
    pub phase: PhaseConfig,
    /// Tokio worker threads of the load generator.
    pub loadgen_threads: usize,
    /// Seeding concurrency.
    pub seed_concurrency: usize,
    /// Rounds of (healthz, heartbeat) phases per step.
    pub rounds: usize,
    /// How agents were created.
    pub seed_mode: SeedMode,
    /// Whether every agent sent one heartbeat with its own token right before the phases.
    pub refresh: bool,
    /// Server binary path.
    pub server_bin: String,
    /// Modification time of the server binary (when it was built).
    pub server_built: String,
    /// The database kind.
    pub backend: Backend,
    /// The database in one line (which server, which settings).
    pub database: String,
    /// `serve` processes sharing the database.
    pub replicas: usize,
    /// Replicas 2..N were started only after seeding (`--late-replicas`).
    pub late_replicas: bool,
    /// Connections of the agent-listing workload (0: not measured).
    pub list_connections: usize,
    /// `/proc/loadavg` at the start of the run.
    pub load_start: String,
    /// `/proc/loadavg` at the end of the run.
    pub load_end: Option<String>,
    /// Each server's highest sampled `VmRSS` per stage of the run.
    pub mem_stages: Stages,
    /// Completed steps.
    pub steps: Vec<StepReport>,
    /// Lines the servers wrote to stderr/stdout over the run.
    pub server_log_lines: Option<u64>,
}

/// One target verdict.
pub struct Verdict {
    /// What is checked.
    pub what: String,
    /// Measured value in words.
    pub measured: String,
    /// Whether it passes.
    pub ok: bool,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mem(m: Option<Memory>) -> String {
    m.map_or_else(|| "n/a".to_owned(), |m| mib(m.rss_kib))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn cpu(p: &PhaseResult, c: Option<Duration>) -> String {
    p.cpu_pct(c)
        .map_or_else(|| "n/a".to_owned(), |pct| format!("{pct:.0} %"))
}

fn error_count(errors: u64, kinds: &std::collections::BTreeMap<String, u64>) -> String {
    if errors == 0 {
        return "0".to_owned();
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    format!("{errors} ({})", kinds.join(", "))
}

fn rps(p: &PhaseResult) -> String {
    if p.round_rps.len() > 1 {
        let (min, max) = p.spread();
        format!("{:.0} ({min:.0}–{max:.0})", p.rps())
    } else {
        format!("{:.0}", p.rps())
    }
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> String {
    format!("{:.2}", h.value_at_quantile(q) as f64 / 1e6)
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Columns of a table: header and whether the column is right-aligned.
struct Table {
    headers: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&str, bool)]) -> Self {
        Self {
            headers: headers
                .iter()
                .map(|(h, right)| ((*h).to_owned(), *right))
                .collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Aligned plain text; backticks and bold markers are dropped.
    fn text(&self) -> String {
        let plain = |s: &str| s.replace(['`', '*'], "");
        let mut width: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(plain(cell).chars().count());
            }
        }
        let mut o = String::new();
        let line = |o: &mut String, cells: Vec<String>| {
            let mut parts = Vec::new();
            for ((cell, w), (_, right)) in cells.iter().zip(&width).zip(&self.headers) {
                let pad = w.saturating_sub(cell.chars().count());
                parts.push(if *right {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                });
            }
            let _ = writeln!(o, "  {}", parts.join("  ").trim_end());
        };
        line(&mut o, self.headers.iter().map(|(h, _)| plain(h)).collect());
        for row in &self.rows {
            line(&mut o, row.iter().map(|c| plain(c)).collect());
        }
        o
    }

    fn markdown(&self) -> String {
        let mut o = String::new();
        let heads: Vec<&str> = self.headers.iter().map(|(h, _)| h.as_str()).collect();
        let _ = writeln!(o, "| {} |", heads.join(" | "));
        let aligns: Vec<&str> = self
            .headers
            .iter()
            .map(|(_, right)| if *right { "---:" } else { "---" })
            .collect();
        let _ = writeln!(o, "|{}|", aligns.join("|"));
        for row in &self.rows {
            let _ = writeln!(o, "| {} |", row.join(" | "));
        }
        o
    }
}

impl Report {
    fn is_pg(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Rows of the throughput table for one phase: the total, then each replica.
    fn phase_rows(&self, t: &mut Table, agents: usize, p: &PhaseResult, vs_healthz: String) {
        let replicas = p.replicas.len();
        let total_name = if replicas > 1 {
            format!("`{}` (all {replicas} replicas)", p.target)
        } else {
            format!("`{}`", p.target)
        };
        let mut row = vec![
            agents.to_string(),
            total_name,
            p.connections.to_string(),
            rps(p),
            format!("{:.2}", p.ms(0.5)),
            format!("{:.2}", p.ms(0.9)),
            format!("{:.2}", p.ms(0.99)),
            format!("{:.2}", p.ms(0.999)),
            format!("{:.2}", p.max_ms()),
            error_count(p.errors, &p.error_kinds),
            cpu(p, p.server_cpu),
        ];
        if self.is_pg() {
            row.push(cpu(p, p.pg_cpu));
        }
        row.extend([cpu(p, p.loadgen_cpu), cpu(p, p.other_cpu()), vs_healthz]);
        t.row(row);
        if replicas > 1 {
            for (r, share) in p.replicas.iter().enumerate() {
                let mut row = vec![
                    agents.to_string(),
                    format!("`{}` replica {}", p.target, r + 1),
                    share.connections.to_string(),
                    format!("{:.0}", p.replica_rps(r)),
                    ms(&share.latency, 0.5),
                    ms(&share.latency, 0.9),
                    ms(&share.latency, 0.99),
                    ms(&share.latency, 0.999),
                    format!("{:.2}", share.latency.max() as f64 / 1e6),
                    share.errors.to_string(),
                    cpu(p, share.server_cpu),
                ];
                if self.is_pg() {
                    row.push(String::new());
                }
                row.extend([String::new(), String::new(), String::new()]);
                t.row(row);
            }
        }
    }

    fn throughput_headers(&self, rounds_label: bool) -> Vec<(&'static str, bool)> {
        let mut h = vec![
            ("Agents", true),
            ("Endpoint", false),
            ("Conns", true),
            (
                if rounds_label {
                    "Req/s (min–max of rounds)"
                } else {
                    "Req/s"
                },
                true,
            ),
            ("p50 ms", true),
            ("p90 ms", true),
            ("p99 ms", true),
            ("p99.9 ms", true),
            ("max ms", true),
            ("Errors", true),
            ("Server CPU", true),
        ];
        if self.is_pg() {
            h.push(("PostgreSQL CPU", true));
        }
        h.extend([
            ("Load-gen CPU", true),
            ("Other CPU", true),
            ("vs /healthz", true),
        ]);
        h
    }

    fn throughput_table(&self) -> Table {
        let mut t = Table::new(&self.throughput_headers(self.rounds > 1));
        for s in &self.steps {
            self.phase_rows(&mut t, s.agents, &s.healthz, "100 %".to_owned());
            self.phase_rows(
                &mut t,
                s.agents,
                &s.heartbeat,
                format!("**{:.1} %**", s.ratio_pct()),
            );
        }
        t
    }

    fn list_table(&self) -> Option<Table> {
        let mut h = self.throughput_headers(false);
        h.pop();
        h[1] = ("Workload", false);
        let mut t = Table::new(&h);
        for s in &self.steps {
            if let Some(p) = &s.list_alone {
                self.phase_rows(&mut t, s.agents, p, String::new());
            }
            if let Some((list, hb)) = &s.list_loaded {
                self.phase_rows(&mut t, s.agents, list, String::new());
                self.phase_rows(&mut t, s.agents, hb, String::new());
            }
        }
        for row in &mut t.rows {
            row.pop();
        }
        (!t.rows.is_empty()).then_some(t)
    }

    fn deadline_table(&self) -> Option<Table> {
        let mut t = Table::new(&[
            ("Agents", true),
            ("Cohort", true),
            ("Tolerance", true),
            ("Measured", false),
            ("p50 ms", true),
            ("p90 ms", true),
            ("p99 ms", true),
            ("max ms", true),
            ("Events on time", true),
            ("Missing", true),
            ("Duplicates", true),
            ("Before deadline", true),
        ]);
        for s in &self.steps {
            let Some(d) = &s.deadline else { continue };
            let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
                format!("{:.1}", DeadlineResult::ms(h, q))
            };
            let max = |h: &hdrhistogram::Histogram<u64>| format!("{:.1}", h.max() as f64 / 1e3);
            let mut rows: Vec<(String, &hdrhistogram::Histogram<u64>)> = vec![
                (
                    format!(
                        "deadline → event at the SSE client (replica {})",
                        d.stream_replica + 1
                    ),
                    &d.tally.latency,
                ),
                (
                    "deadline → event recorded (`created_at`)".to_owned(),
                    &d.tally.detect,
                ),
                ("recorded → at the SSE client".to_owned(), &d.tally.deliver),
            ];
            if d.replicas > 1 {
                for (r, h) in d.tally.latency_by_replica.iter().enumerate() {
                    rows.push((
                        format!("deadline → SSE client, heartbeat sent to replica {}", r + 1),
                        h,
                    ));
                }
            }
            for (k, (what, h)) in rows.into_iter().enumerate() {
                let counts = if k == 0 {
                    [
                        d.tally.on_time.to_string(),
                        d.tally.missing.to_string(),
                        d.tally.duplicates.to_string(),
                        d.tally.early.to_string(),
                    ]
                } else {
                    [String::new(), String::new(), String::new(), String::new()]
                };
                let mut row = vec![
                    s.agents.to_string(),
                    d.cohort.to_string(),
                    format!("{} s", d.tolerance_seconds),
                    what,
                    q(h, 0.5),
                    q(h, 0.9),
                    q(h, 0.99),
                    max(h),
                ];
                row.extend(counts);
                t.row(row);
            }
        }
        (!t.rows.is_empty()).then_some(t)
    }

    fn deadline_notes(&self) -> String {
        let mut o = String::new();
        for s in &self.steps {
            let Some(d) = &s.deadline else { continue };
            let b = &d.background;
            let _ = writeln!(
                o,
                "Deadline phase at {} agents: {} cohort agents (every {}th) got `heartbeat_config` interval = tolerance = {} s through `PATCH /api/v1/agents/{{id}}`, went offline and settled; then, while the other {} agents heartbeated over {} connections ({:.0} heartbeats/s, p99 {:.2} ms, {} errors; server CPU {}{}, load-gen {}, other {}), each cohort agent sent one heartbeat (spread over {:.1} s, over {} replica(s)) and went silent; an SSE client on replica {} followed `GET /api/v1/agents/stream?event_types=agent.offline`. Leader (`mc_leader 1`) at the end: {}. Stream: {}. Stale events from the setup: {}; offline events of other agents: {}; cohort requests failed: {}{}.",
                s.agents,
                d.cohort,
                s.agents / d.cohort.max(1),
                d.tolerance_seconds,
                s.agents - d.cohort,
                b.connections,
                b.rps(),
                b.ms(0.99),
                b.errors,
                cpu(b, b.server_cpu),
                if self.is_pg() {
                    format!(", PostgreSQL {}", cpu(b, b.pg_cpu))
                } else {
                    String::new()
                },
                cpu(b, b.loadgen_cpu),
                cpu(b, b.other_cpu()),
                d.spread.as_secs_f64(),
                d.replicas,
                d.stream_replica + 1,
                d.leader.map_or_else(
                    || "none said so".to_owned(),
                    |r| format!("replica {}", r + 1)
                ),
                d.stream_end,
                d.tally.stale,
                d.foreign,
                d.request_errors,
                d.first_error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" (first: {e})")),
            );
            for note in &d.stream_notes {
                let _ = writeln!(o, "Stream said: {note}");
            }
        }
        o
    }

    fn memory_table(&self) -> Table {
        let mut t = Table::new(&[
            ("Agents", true),
            ("Added", true),
            ("Seeding time", true),
            ("Agents/s", true),
            ("Refresh", true),
            ("Status events during phases", true),
            ("Server", false),
            ("RSS after seeding", true),
            ("after heartbeats", true),
            ("after all phases", true),
            ("peak RSS", true),
            ("Database on disk", true),
        ]);
        for s in &self.steps {
            for r in 0..self.replicas {
                let first = r == 0;
                let cell = |v: String| if first { v } else { String::new() };
                t.row(vec![
                    cell(s.agents.to_string()),
                    cell((s.seed.to - s.seed.from).to_string()),
                    cell(secs(s.seed.elapsed)),
                    cell(format!("{:.0}", s.seed.rate())),
                    cell(s.refresh.map_or_else(|| "-".to_owned(), secs)),
                    cell(
                        s.events_during_phases
                            .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
                    ),
                    if self.replicas > 1 {
                        format!("replica {}", r + 1)
                    } else {
                        "server".to_owned()
                    },
                    mem(s.mem_after_seed.get(r).copied().flatten()),
                    mem(s.mem_after_heartbeat.get(r).copied().flatten()),
                    mem(s.mem_end.get(r).copied().flatten()),
                    s.peak_kib(r).map_or_else(|| "n/a".to_owned(), mib),
                    cell(
                        s.data_bytes
                            .map_or_else(|| "n/a".to_owned(), |b| mib(b / 1024)),
                    ),
                ]);
            }
        }
        t
    }

    fn stage_table(&self) -> Option<Table> {
        let mut heads: Vec<(String, bool)> = vec![("Stage".to_owned(), false)];
        for r in 0..self.replicas {
            heads.push((
                if self.replicas > 1 {
                    format!("replica {} peak RSS", r + 1)
                } else {
                    "server peak RSS".to_owned()
                },
                true,
            ));
        }
        let borrowed: Vec<(&str, bool)> = heads.iter().map(|(h, r)| (h.as_str(), *r)).collect();
        let mut t = Table::new(&borrowed);
        for (name, peaks) in &self.mem_stages.0 {
            let mut row = vec![name.clone()];
            // 0: no sample of that process fell in the stage (started later, or too short).
            row.extend(
                peaks
                    .iter()
                    .map(|&kib| if kib == 0 { "-".to_owned() } else { mib(kib) }),
            );
            t.row(row);
        }
        (!t.rows.is_empty()).then_some(t)
    }

    /// The targets from the issues, checked against the completed steps.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut v = Vec::new();
        let backend = self.backend.name();
        for s in &self.steps {
            v.push(Verdict {
                what: format!(
                    "heartbeat ≥ {TARGET_RATIO_PCT:.0} % of /healthz ({} agents, {backend})",
                    s.agents
                ),
                measured: format!("{:.1} %", s.ratio_pct()),
                ok: s.ratio_pct() >= TARGET_RATIO_PCT,
            });
            let p99 = s.heartbeat.ms(0.99);
            let at = if s.heartbeat.connections == TARGET_P99_CONNECTIONS {
                String::new()
            } else {
                format!(
                    " (target is stated for {TARGET_P99_CONNECTIONS}; this run used {})",
                    s.heartbeat.connections
                )
            };
            v.push(Verdict {
                what: format!(
                    "heartbeat p99 ≤ {TARGET_P99_MS:.0} ms at {} connections, no errors ({} agents, {backend}){at}",
                    s.heartbeat.connections, s.agents
                ),
                measured: format!("p99 {p99:.2} ms, {} errors", s.heartbeat.errors),
                ok: p99 <= TARGET_P99_MS && s.heartbeat.errors == 0,
            });
            if self.is_pg() {
                for r in 0..s.heartbeat.replicas.len() {
                    let rate = s.heartbeat.replica_rps(r);
                    v.push(Verdict {
                        what: format!(
                            "≥ {TARGET_PG_RPS_PER_REPLICA:.0} heartbeats/s per replica on PostgreSQL, replica {} of {} ({} agents)",
                            r + 1,
                            self.replicas,
                            s.agents
                        ),
                        measured: format!(
                            "{rate:.0}/s (all replicas {:.0}/s)",
                            s.heartbeat.rps()
                        ),
                        ok: rate >= TARGET_PG_RPS_PER_REPLICA,
                    });
                }
            }
            for r in 0..self.replicas {
                if let Some(peak) = s.peak_kib(r) {
                    let bytes = peak * 1024;
                    v.push(Verdict {
                        what: format!(
                            "peak resident memory < 200 MB per server ({}{} agents, {backend})",
                            if self.replicas > 1 {
                                format!("replica {}, ", r + 1)
                            } else {
                                String::new()
                            },
                            s.agents
                        ),
                        measured: format!(
                            "{:.1} MB ({}; after heartbeats {})",
                            bytes as f64 / 1e6,
                            mib(peak),
                            mem(s.mem_after_heartbeat.get(r).copied().flatten())
                        ),
                        ok: bytes < TARGET_RSS_BYTES,
                    });
                }
            }
            let list_verdict = |p: &PhaseResult, how: String| Verdict {
                what: format!(
                    "`GET /api/v1/agents?limit=200` p99 < {TARGET_LIST_P99_MS:.0} ms, {how} ({} agents, {backend})",
                    s.agents
                ),
                measured: format!(
                    "p99 {:.2} ms ({:.0} req/s, {} errors)",
                    p.ms(0.99),
                    p.rps(),
                    p.errors
                ),
                ok: p.ms(0.99) < TARGET_LIST_P99_MS && p.errors == 0,
            };
            if let Some(p) = &s.list_alone {
                v.push(list_verdict(
                    p,
                    format!("alone, {} connections", p.connections),
                ));
            }
            if let Some((p, hb)) = &s.list_loaded {
                v.push(list_verdict(
                    p,
                    format!(
                        "{} connections under heartbeat load ({} connections, {:.0}/s)",
                        p.connections,
                        hb.connections,
                        hb.rps()
                    ),
                ));
            }
            if let Some(d) = &s.deadline {
                let p99 = DeadlineResult::ms(&d.tally.latency, 0.99);
                v.push(Verdict {
                    what: format!(
                        "deadline → `agent.offline` at an SSE client p99 < 1 s, each agent exactly one event ({} agents, cohort {}, {backend}, {} replica(s))",
                        s.agents, d.cohort, d.replicas
                    ),
                    measured: format!(
                        "p99 {p99:.1} ms, max {:.1} ms; {} of {} on time, {} missing, {} duplicates, {} before the deadline",
                        d.tally.latency.max() as f64 / 1e3,
                        d.tally.on_time,
                        d.cohort,
                        d.tally.missing,
                        d.tally.duplicates,
                        d.tally.early
                    ),
                    ok: p99 < TARGET_DEADLINE_P99_MS
                        && d.tally.missing == 0
                        && d.tally.duplicates == 0
                        && d.tally.early == 0,
                });
            }
        }
        if self.steps.len() > 1 {
            let (first, last) = (&self.steps[0], &self.steps[self.steps.len() - 1]);
            let pct = 100.0 * last.heartbeat.rps() / first.heartbeat.rps().max(1e-9);
            v.push(Verdict {
                what: format!(
                    "no drop from {} to {} agents (heartbeat req/s kept ≥ {TARGET_SCALING_PCT:.0} %)",
                    first.agents, last.agents
                ),
                measured: format!(
                    "{:.0} → {:.0} req/s = {pct:.1} % (ratio to /healthz {:.1} % → {:.1} %)",
                    first.heartbeat.rps(),
                    last.heartbeat.rps(),
                    first.ratio_pct(),
                    last.ratio_pct()
                ),
                ok: pct >= TARGET_SCALING_PCT,
            });
        }
        v
    }

    /// How the agents were seeded, in one sentence.
    pub fn seeding_sentence(&self) -> String {
        let how = match self.seed_mode {
            SeedMode::Enroll => {
                "enrolled through `POST /api/v1/agents/heartbeat` with an enrollment token"
            }
            SeedMode::Admin => {
                "created by the admin (`POST /api/v1/agents` + `POST /api/v1/agents/{id}/token`)"
            }
        };
        let prime = if self.refresh {
            "; right before each step's phases every agent sends one heartbeat with its own token (refresh), so none starts offline"
        } else {
            ""
        };
        let spread = if self.replicas > 1 {
            ", the requests taking turns over the replicas"
        } else {
            ""
        };
        format!(
            "Seeding: agents {how}, {} requests in flight{spread}{prime}.",
            self.seed_concurrency
        )
    }

    fn servers_sentence(&self) -> String {
        let replicas = if self.replicas > 1 {
            format!(
                "{} `mission-control serve` replicas (each its own data dir, one `--admin-token`), sharing one database",
                self.replicas
            )
        } else {
            "`mission-control serve`".to_owned()
        };
        let db = match self.backend {
            Backend::Sqlite => "SQLite (fresh temp data dir)".to_owned(),
            Backend::Postgres => self.database.clone(),
        };
        let late = if self.late_replicas && self.replicas > 1 {
            "; replicas 2 and up started only after the agents were seeded and refreshed through replica 1 (`--late-replicas`: they loaded every agent from the database at start)"
        } else {
            ""
        };
        format!(
            "{replicas} (binary built {}) on {db}, started by the bench on 127.0.0.1{late}",
            self.server_built
        )
    }

    fn load_sentence(&self) -> String {
        let spread = if self.replicas > 1 {
            format!(
                "; connection k talks to replica k mod {}, so the load is split evenly",
                self.replicas
            )
        } else {
            String::new()
        };
        let list = if self.list_connections > 0 {
            format!(
                "; agent listings (`GET /api/v1/agents?limit=200`, admin bearer token) over {} connections, alone and then alongside the heartbeat load",
                self.list_connections
            )
        } else {
            String::new()
        };
        format!(
            "same machine, {} tokio worker threads, {} keep-alive HTTP/1.1 connections with one request in flight each (closed loop), {} warm-up + {} measured per phase, {} round(s) alternating the /healthz and heartbeat phases (figures merged over rounds); heartbeats rotate `X-Agent-Token` over all agents{spread}{list}",
            self.loadgen_threads,
            self.phase.connections,
            secs(self.phase.warmup),
            secs(self.phase.duration),
            self.rounds
        )
    }

    fn load_average_sentence(&self) -> String {
        format!(
            "`uptime` load average (1, 5, 15 min) {} at the start, {} at the end",
            self.load_start,
            self.load_end.as_deref().unwrap_or("n/a")
        )
    }

    fn cpu_note(&self) -> String {
        let pg = if self.is_pg() {
            "; \"PostgreSQL\" sums every process of the database server (postmaster, backends, background workers, and backends that ended)"
        } else {
            ""
        };
        format!(
            "CPU columns are CPU time over the measured window as a percentage of one core ({} cores = {} %){pg}; \"Other\" is every other process on the machine (should be near 0). Per-replica rows show that replica's connections, answers and server CPU.",
            self.facts.nproc,
            self.facts.nproc * 100
        )
    }

    /// Plain-text report for the terminal.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let f = &self.facts;
        let _ = writeln!(o, "\nMission Control load benchmark — {}", f.date);
        let _ = writeln!(
            o,
            "machine: {} CPUs ({}), {:.1} GiB, kernel {}; commit {}",
            f.nproc, f.cpu_model, f.mem_total_gib, f.kernel, f.git_commit
        );
        let _ = writeln!(o, "load:    {}", self.load_average_sentence());
        let _ = writeln!(o, "servers: {}", self.servers_sentence());
        let _ = writeln!(o, "binary:  {}", self.server_bin);
        let _ = writeln!(o, "client:  {}", self.load_sentence());
        let _ = writeln!(o, "{}", self.seeding_sentence());
        let _ = writeln!(o, "command: {}\n", self.command);
        o.push_str(&self.throughput_table().text());
        if let Some(t) = self.list_table() {
            let _ = writeln!(o, "\nagent listing:");
            o.push_str(&t.text());
        }
        if let Some(t) = self.deadline_table() {
            let _ = writeln!(o, "\noffline deadline → SSE event:");
            o.push_str(&t.text());
            let _ = writeln!(o, "{}", self.deadline_notes());
        }
        let _ = writeln!(o, "\nseeding and memory:");
        o.push_str(&self.memory_table().text());
        if let Some(t) = self.stage_table() {
            let _ = writeln!(o, "\nhighest VmRSS sampled every 100 ms, by stage:");
            o.push_str(&t.text());
        }
        if let Some(n) = self.server_log_lines {
            let _ = writeln!(o, "\nservers wrote {n} log lines over the run");
        }
        let mut first_errors = Vec::new();
        for s in &self.steps {
            let mut phases = vec![&s.healthz, &s.heartbeat];
            phases.extend(&s.list_alone);
            if let Some((a, b)) = &s.list_loaded {
                phases.extend([a, b]);
            }
            for p in phases {
                if let Some(e) = &p.first_error {
                    first_errors.push(format!("  {} agents, {}: {e}", s.agents, p.target));
                }
            }
        }
        if !first_errors.is_empty() {
            let _ = writeln!(o, "\nfirst error per phase:");
            for e in first_errors {
                let _ = writeln!(o, "{e}");
            }
        }
        let _ = writeln!(o, "\ntargets:");
        for v in self.verdicts() {
            let _ = writeln!(o, "  [{}] {} — {}", pass(v.ok), v.what, v.measured);
        }
        o
    }

    /// Markdown block for docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let f = &self.facts;
        let _ = writeln!(
            o,
            "### {} load benchmark, {} replica(s) — {}\n",
            self.backend.name(),
            self.replicas,
            f.date
        );
        let _ = writeln!(
            o,
            "Command (after `cargo build --release -p mission-control -p mc-bench`):\n"
        );
        let _ = writeln!(o, "```sh\n{}\n```\n", self.command);
        let _ = writeln!(
            o,
            "- Machine: {} CPUs (`nproc`), {}, {:.1} GiB RAM, Linux {}; {}",
            f.nproc,
            f.cpu_model,
            f.mem_total_gib,
            f.kernel,
            self.load_average_sentence()
        );
        let _ = writeln!(o, "- Commit: `{}`", f.git_commit);
        let _ = writeln!(o, "- Servers: {}", self.servers_sentence());
        let _ = writeln!(o, "- Load generator: {}\n", self.load_sentence());
        o.push_str(&self.throughput_table().markdown());
        let _ = writeln!(o, "\n{}\n", self.cpu_note());
        if let Some(t) = self.list_table() {
            o.push_str(&t.markdown());
            let _ = writeln!(o);
        }
        if let Some(t) = self.deadline_table() {
            o.push_str(&t.markdown());
            let _ = writeln!(o, "\n{}", self.deadline_notes());
        }
        o.push_str(&self.memory_table().markdown());
        let _ = writeln!(
            o,
            "\n{} RSS is `VmRSS`, peak is `VmHWM` of each `serve` process (200 MB = 190.7 MiB).\n",
            self.seeding_sentence()
        );
        if let Some(t) = self.stage_table() {
            let _ = writeln!(
                o,
                "Highest `VmRSS` sampled every 100 ms, by stage of the run:\n"
            );
            o.push_str(&t.markdown());
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "| Target | Measured | Result |");
        let _ = writeln!(o, "|---|---|---|");
        for v in self.verdicts() {
            let _ = writeln!(o, "| {} | {} | {} |", v.what, v.measured, pass(v.ok));
        }
        o
    }
}
