//! Human-readable and markdown reports.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::{PhaseConfig, PhaseResult};
use crate::procfs::{MachineFacts, Memory};
use crate::seed::{SeedMode, SeedStats};

/// Heartbeat throughput must reach this share of the `/healthz` baseline.
pub const TARGET_RATIO_PCT: f64 = 40.0;
/// Heartbeat p99 bound, in milliseconds, at 64 connections.
pub const TARGET_P99_MS: f64 = 10.0;
/// Connection count at which the p99 target applies.
pub const TARGET_P99_CONNECTIONS: usize = 64;
/// "No drop" when agents grow: the largest step keeps at least this share of the smallest
/// step's heartbeat throughput (allowing for run-to-run noise).
pub const TARGET_SCALING_PCT: f64 = 90.0;

/// Measurements at one agent count.
pub struct StepReport {
    /// Agents registered on the server.
    pub agents: usize,
    /// Seeding round that brought the server to `agents`.
    pub seed: SeedStats,
    /// Server memory right after seeding.
    pub mem_after_seed: Option<Memory>,
    /// Server memory after the heartbeat phase.
    pub mem_after_heartbeat: Option<Memory>,
    /// Size of the data directory after the heartbeat phase.
    pub data_bytes: u64,
    /// Wall time of the refresh pass (one heartbeat per agent) before the phases.
    pub refresh: Option<Duration>,
    /// Activity events (status transitions) recorded on the board during the phases.
    pub events_during_phases: Option<u64>,
    /// `/healthz` baseline.
    pub healthz: PhaseResult,
    /// Heartbeat phase.
    pub heartbeat: PhaseResult,
}

impl StepReport {
    /// Heartbeat throughput as a percentage of the `/healthz` baseline.
    pub fn ratio_pct(&self) -> f64 {
        100.0 * self.heartbeat.rps() / self.healthz.rps().max(1e-9)
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
    /// Completed steps.
    pub steps: Vec<StepReport>,
    /// Lines the server wrote to stderr/stdout over the run.
    pub server_log_lines: Option<u64>,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mem(m: Option<Memory>) -> String {
    m.map_or_else(|| "n/a".to_owned(), |m| mib(m.rss_kib))
}

fn bytes(b: u64) -> String {
    mib(b / 1024)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn cpu(p: &PhaseResult, c: Option<Duration>) -> String {
    p.cpu_pct(c)
        .map_or_else(|| "n/a".to_owned(), |pct| format!("{pct:.0} %"))
}

fn errors(p: &PhaseResult) -> String {
    if p.errors == 0 {
        return "0".to_owned();
    }
    let kinds: Vec<String> = p
        .error_kinds
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    format!("{} ({})", p.errors, kinds.join(", "))
}

fn events(s: &StepReport) -> String {
    s.events_during_phases
        .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
}

fn rps(p: &PhaseResult) -> String {
    if p.round_rps.len() > 1 {
        let (min, max) = p.spread();
        format!("{:.0} ({min:.0}–{max:.0})", p.rps())
    } else {
        format!("{:.0}", p.rps())
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
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

impl Report {
    /// The targets from the issue, checked against the completed steps.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut v = Vec::new();
        for s in &self.steps {
            v.push(Verdict {
                what: format!(
                    "heartbeat ≥ {TARGET_RATIO_PCT:.0} % of /healthz ({} agents)",
                    s.agents
                ),
                measured: format!("{:.1} %", s.ratio_pct()),
                ok: s.ratio_pct() >= TARGET_RATIO_PCT,
            });
            let p99 = s.heartbeat.ms(0.99);
            let ok = p99 <= TARGET_P99_MS && s.heartbeat.errors == 0;
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
                    "heartbeat p99 ≤ {TARGET_P99_MS:.0} ms at {} connections, no errors ({} agents){at}",
                    s.heartbeat.connections, s.agents
                ),
                measured: format!("p99 {p99:.2} ms, {} errors", s.heartbeat.errors),
                ok,
            });
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
        format!(
            "Seeding: agents {how}, {} requests in flight{prime}.",
            self.seed_concurrency
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
        let _ = writeln!(
            o,
            "load:    {} keep-alive HTTP/1.1 connections, 1 request in flight each, {} warm-up + {} measured per phase, {} round(s) alternating /healthz and heartbeat, {} load-generator threads on the same machine",
            self.phase.connections,
            secs(self.phase.warmup),
            secs(self.phase.duration),
            self.rounds,
            self.loadgen_threads
        );
        let _ = writeln!(
            o,
            "server:  {} (built {}), SQLite in a temp data dir",
            self.server_bin, self.server_built
        );
        let _ = writeln!(o, "{}", self.seeding_sentence());
        let _ = writeln!(o, "command: {}\n", self.command);

        let _ = writeln!(
            o,
            "{:>7}  {:<22} {:>5} {:>21} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}  errors",
            "agents",
            "endpoint",
            "conns",
            if self.rounds > 1 {
                "req/s (min–max)"
            } else {
                "req/s"
            },
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "srv CPU",
            "gen CPU",
            "other"
        );
        for s in &self.steps {
            for p in [&s.healthz, &s.heartbeat] {
                let _ = writeln!(
                    o,
                    "{:>7}  {:<22} {:>5} {:>21} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>8} {:>8} {:>8}  {}",
                    s.agents,
                    p.target,
                    p.connections,
                    rps(p),
                    p.ms(0.5),
                    p.ms(0.9),
                    p.ms(0.99),
                    p.ms(0.999),
                    p.max_ms(),
                    cpu(p, p.server_cpu),
                    cpu(p, p.loadgen_cpu),
                    cpu(p, p.other_cpu()),
                    errors(p)
                );
            }
            let _ = writeln!(o, "{:>7}  heartbeat / healthz = {:.1} %", "", s.ratio_pct());
        }

        let _ = writeln!(
            o,
            "\n{:>7}  {:>9} {:>9} {:>9} {:>8} {:>8} {:>7}  {:>15} {:>15} {:>12} {:>12}",
            "agents",
            "added",
            "seed time",
            "agents/s",
            "retries",
            "refresh",
            "events",
            "RSS after seed",
            "RSS after hb",
            "peak RSS",
            "data dir"
        );
        for s in &self.steps {
            let _ = writeln!(
                o,
                "{:>7}  {:>9} {:>9} {:>9.0} {:>8} {:>8} {:>7}  {:>15} {:>15} {:>12} {:>12}",
                s.agents,
                s.seed.to - s.seed.from,
                secs(s.seed.elapsed),
                s.seed.rate(),
                s.seed.retries,
                s.refresh.map_or_else(|| "-".to_owned(), secs),
                events(s),
                mem(s.mem_after_seed),
                mem(s.mem_after_heartbeat),
                s.mem_after_heartbeat
                    .map_or_else(|| "n/a".to_owned(), |m| mib(m.hwm_kib)),
                bytes(s.data_bytes)
            );
        }
        if let Some(n) = self.server_log_lines {
            let _ = writeln!(o, "\nserver wrote {n} log lines over the run");
        }

        let mut first_errors = Vec::new();
        for s in &self.steps {
            for p in [&s.healthz, &s.heartbeat] {
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
        let _ = writeln!(o, "### Heartbeat load benchmark — {}\n", f.date);
        let _ = writeln!(
            o,
            "Command (after `cargo build --release -p mission-control`):\n"
        );
        let _ = writeln!(o, "```sh\n{}\n```\n", self.command);
        let _ = writeln!(
            o,
            "- Machine: {} CPUs (`nproc`), {}, {:.1} GiB RAM, Linux {}",
            f.nproc, f.cpu_model, f.mem_total_gib, f.kernel
        );
        let _ = writeln!(o, "- Commit: `{}`", f.git_commit);
        let _ = writeln!(
            o,
            "- Server: `mission-control serve` (binary built {}) on SQLite (fresh temp data dir), started by the bench on 127.0.0.1",
            self.server_built
        );
        let _ = writeln!(
            o,
            "- Load generator: same machine, {} tokio worker threads, {} keep-alive HTTP/1.1 connections with one request in flight each (closed loop), {} warm-up + {} measured per phase, {} round(s) alternating the /healthz and heartbeat phases (figures merged over rounds); heartbeats rotate `X-Agent-Token` over all agents\n",
            self.loadgen_threads,
            self.phase.connections,
            secs(self.phase.warmup),
            secs(self.phase.duration),
            self.rounds
        );
        let _ = writeln!(
            o,
            "| Agents | Endpoint | Conns | {} | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | Errors | Server CPU | Load-gen CPU | Other CPU | vs /healthz |",
            if self.rounds > 1 {
                "Req/s (min–max of rounds)"
            } else {
                "Req/s"
            }
        );
        let _ = writeln!(
            o,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.steps {
            for (p, ratio) in [
                (&s.healthz, "100 %".to_owned()),
                (&s.heartbeat, format!("**{:.1} %**", s.ratio_pct())),
            ] {
                let _ = writeln!(
                    o,
                    "| {} | `{}` | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
                    s.agents,
                    p.target,
                    p.connections,
                    rps(p),
                    p.ms(0.5),
                    p.ms(0.9),
                    p.ms(0.99),
                    p.ms(0.999),
                    p.max_ms(),
                    errors(p),
                    cpu(p, p.server_cpu),
                    cpu(p, p.loadgen_cpu),
                    cpu(p, p.other_cpu()),
                    ratio
                );
            }
        }
        let _ = writeln!(
            o,
            "\nCPU columns are CPU time over the measured window as a percentage of one core ({} cores = {} %); \"Other\" is every other process on the machine (should be near 0).\n",
            f.nproc,
            f.nproc * 100
        );
        let _ = writeln!(
            o,
            "| Agents | Added | Seeding time | Agents/s | Refresh | Status events during phases | Server RSS after seeding | after heartbeats | peak RSS | Data dir |"
        );
        let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for s in &self.steps {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                s.agents,
                s.seed.to - s.seed.from,
                secs(s.seed.elapsed),
                s.seed.rate(),
                s.refresh.map_or_else(|| "-".to_owned(), secs),
                events(s),
                mem(s.mem_after_seed),
                mem(s.mem_after_heartbeat),
                s.mem_after_heartbeat
                    .map_or_else(|| "n/a".to_owned(), |m| mib(m.hwm_kib)),
                bytes(s.data_bytes)
            );
        }
        let _ = writeln!(o, "\n{}\n", self.seeding_sentence());
        let _ = writeln!(o, "| Target | Measured | Result |");
        let _ = writeln!(o, "|---|---|---|");
        for v in self.verdicts() {
            let _ = writeln!(o, "| {} | {} | {} |", v.what, v.measured, pass(v.ok));
        }
        o
    }
}
