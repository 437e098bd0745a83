//! Readers for `/proc`: resident memory and CPU time of a process, machine facts.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Memory figures of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Current resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`; `None` when the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:").unwrap_or(0),
    })
}

/// User + system CPU time consumed so far by `pid` (`"self"` for this process).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let hz = clock_ticks_per_second();
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is a letter: keep its place with a zero.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// The command name of `pid` (`/proc/<pid>/comm`).
fn comm(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// CPU time of a PostgreSQL server: every process of it (postmaster, backends, background
/// workers) plus the time of its backends that already ended, which the kernel adds to
/// the postmaster's `cutime`/`cstime` when it reaps them.
#[derive(Debug, Clone, Copy)]
pub enum PgProcesses {
    /// The server whose postmaster has this pid (the bench's throwaway one).
    Postmaster(u32),
    /// Every process named `postgres` on the machine (a server the bench did not start).
    AllNamedPostgres,
}

impl PgProcesses {
    /// User + system CPU time consumed so far by the server's processes, living and reaped.
    pub fn cpu_time(self) -> Option<Duration> {
        let hz = clock_ticks_per_second();
        let mut ticks = 0u64;
        let mut found = false;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Some(f) = stat_fields(pid) else { continue };
            // Indices into `f` (field 3 = index 0): ppid 4 → 1, utime 14 → 11, stime 15 →
            // 12, cutime 16 → 13, cstime 17 → 14.
            let (ppid, own) = (f.get(1).copied().unwrap_or(0), f.get(11).zip(f.get(12)));
            let reaped = f.get(13).zip(f.get(14));
            let is_root = match self {
                Self::Postmaster(root) => pid == root.to_string(),
                Self::AllNamedPostgres => {
                    comm(pid).as_deref() == Some("postgres")
                        && comm(&ppid.to_string()).as_deref() != Some("postgres")
                }
            };
            let is_child = match self {
                Self::Postmaster(root) => ppid == u64::from(root),
                Self::AllNamedPostgres => !is_root && comm(pid).as_deref() == Some("postgres"),
            };
            if is_root {
                found = true;
                if let Some((cu, cs)) = reaped {
                    ticks += cu + cs;
                }
            }
            if (is_root || is_child)
                && let Some((u, s)) = own
            {
                ticks += u + s;
            }
        }
        found.then(|| Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), as `uptime` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The time of day (UTC) and the load average, for progress lines that logs are matched to.
pub fn clock_and_load() -> String {
    format!(
        "at {}, load average {}",
        chrono::Utc::now().format("%H:%M:%S UTC"),
        load_average()
    )
}

/// Machine-wide CPU time from the first line of `/proc/stat`: (busy, total) summed over all
/// CPUs; busy excludes idle and iowait.
pub fn machine_cpu() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (guest times are inside user/nice).
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let hz = clock_ticks_per_second();
    let d = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Some((d(total.saturating_sub(idle)), d(total)))
}

/// `getconf CLK_TCK`, 100 when unavailable.
fn clock_ticks_per_second() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

/// Sum of the sizes of all regular files under `dir` (the SQLite files of the server).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Facts about the machine the benchmark ran on.
#[derive(Debug, Clone)]
pub struct MachineFacts {
    /// Logical CPUs available (what `nproc` prints).
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal` from `/proc/meminfo`, in GiB.
    pub mem_total_gib: f64,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// `git rev-parse --short HEAD`, with `+dirty` when the work tree has changes.
    pub git_commit: String,
    /// UTC date and time of the run.
    pub date: String,
}

impl MachineFacts {
    /// Collects the facts; every missing one reads `unknown`.
    pub fn collect() -> Self {
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_total_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map(|kib| kib / (1024.0 * 1024.0))
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git").args(args).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let git_commit = match git(&["rev-parse", "--short", "HEAD"]) {
            Some(c) if !c.is_empty() => {
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{c}+dirty") } else { c }
            }
            _ => "unknown (no commit)".to_owned(),
        };
        Self {
            nproc,
            cpu_model,
            mem_total_gib,
            kernel,
            git_commit,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// The highest resident memory of each watched process during each stage of the run,
/// sampled on a thread of its own (`VmHWM` only gives the peak of the whole run, not when
/// it happened).
pub struct MemWatch {
    shared: std::sync::Arc<std::sync::Mutex<Stages>>,
    pids: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Stages in order, each with the highest `VmRSS` seen per process, in KiB.
#[derive(Debug, Default, Clone)]
pub struct Stages(pub Vec<(String, Vec<u64>)>);

impl Stages {
    fn note(&mut self, rss: &[Option<u64>]) {
        if let Some((_, peaks)) = self.0.last_mut() {
            if peaks.len() < rss.len() {
                peaks.resize(rss.len(), 0);
            }
            for (peak, now) in peaks.iter_mut().zip(rss) {
                *peak = (*peak).max(now.unwrap_or(0));
            }
        }
    }
}

impl MemWatch {
    /// Starts sampling `pids` every `every`.
    pub fn start(pids: Vec<u32>, every: Duration) -> Self {
        use std::sync::atomic::Ordering;
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Stages::default()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pids = std::sync::Arc::new(std::sync::Mutex::new(pids));
        let thread = {
            let (shared, stop, pids) = (shared.clone(), stop.clone(), pids.clone());
            std::thread::Builder::new()
                .name("mem-watch".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let now: Vec<u32> = pids.lock().map(|p| p.clone()).unwrap_or_default();
                        let rss: Vec<Option<u64>> = now
                            .iter()
                            .map(|&pid| memory(pid).map(|m| m.rss_kib))
                            .collect();
                        if let Ok(mut stages) = shared.lock() {
                            stages.note(&rss);
                        }
                        std::thread::sleep(every);
                    }
                })
                .ok()
        };
        Self {
            shared,
            pids,
            stop,
            thread,
        }
    }

    /// Watches one more process (after those already watched).
    pub fn watch(&self, pid: u32) {
        if let Ok(mut pids) = self.pids.lock() {
            pids.push(pid);
        }
    }

    /// Starts a new stage (the samples after this belong to it).
    pub fn stage(&self, name: impl Into<String>) {
        let processes = self.pids.lock().map(|p| p.len()).unwrap_or(0);
        if let Ok(mut stages) = self.shared.lock() {
            stages.0.push((name.into(), vec![0; processes]));
        }
    }

    /// What was seen so far.
    pub fn stages(&self) -> Stages {
        self.shared.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops sampling.
    pub fn stop(mut self) -> Stages {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_keeps_its_own_highest_sample_per_process() {
        let mut s = Stages::default();
        s.note(&[Some(5), Some(5)]);
        s.0.push(("seed".to_owned(), vec![0, 0]));
        s.note(&[Some(10), Some(30)]);
        s.note(&[Some(20), None]);
        s.0.push(("load".to_owned(), vec![0, 0]));
        s.note(&[Some(15), Some(12)]);
        // A process watched from the middle of a stage on.
        s.note(&[Some(1), Some(1), Some(40)]);
        assert_eq!(
            s.0,
            vec![
                ("seed".to_owned(), vec![20, 30]),
                ("load".to_owned(), vec![15, 12, 40])
            ]
        );
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = memory(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert!(cpu_time("self").is_some());
    }
}
