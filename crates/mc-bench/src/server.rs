//! The server under test: a `mission-control serve` child process.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How many of the last output lines are kept for error messages.
const TAIL_LINES: usize = 40;

/// The marker the server prints once its listener is bound.
const LISTENING_MARKER: &str = "listening on http://";

/// A running server child process. Dropping it kills the process (`kill_on_drop`).
pub struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    tail: Arc<Mutex<VecDeque<String>>>,
    log_path: PathBuf,
    drains: Vec<JoinHandle<u64>>,
}

/// What the caller needs to start a server.
pub struct ServerConfig<'a> {
    /// Path of the `mission-control` binary.
    pub bin: &'a Path,
    /// `--data-dir` (the SQLite database lives there, unless `database_url` is set).
    pub data_dir: &'a Path,
    /// File that receives the child's stderr and stdout.
    pub log_path: &'a Path,
    /// `--admin-token`.
    pub admin_token: &'a str,
    /// `--database-url` (PostgreSQL); `None` keeps SQLite in the data dir.
    pub database_url: Option<&'a str>,
    /// Extra arguments appended after the standard ones.
    pub extra_args: &'a [String],
    /// How long to wait for the listening line.
    pub startup_timeout: Duration,
    /// `RUST_LOG` for the child; `None` inherits this process's environment.
    pub rust_log: Option<&'a str>,
}

impl Server {
    /// Spawns `<bin> serve --bind 127.0.0.1:0 ...` and waits for its `listening on http://ADDR` line.
    pub async fn start(cfg: ServerConfig<'_>) -> Result<Self> {
        if !cfg.bin.is_file() {
            bail!(
                "server binary not found at {}\n  build it first: cargo build --release -p mission-control\n  (or pass --server-bin PATH)",
                cfg.bin.display()
            );
        }
        let mut cmd = Command::new(cfg.bin);
        cmd.arg("serve")
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(cfg.data_dir)
            .arg("--admin-token")
            .arg(cfg.admin_token)
            .args(
                cfg.database_url
                    .iter()
                    .flat_map(|url| ["--database-url", url]),
            )
            .args(cfg.extra_args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(filter) = cfg.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", cfg.bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("server exited immediately"))?;

        let log = tokio::fs::File::create(cfg.log_path)
            .await
            .with_context(|| format!("cannot create {}", cfg.log_path.display()))?;
        let log = Arc::new(tokio::sync::Mutex::new(log));
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (addr_tx, mut addr_rx) = mpsc::channel::<SocketAddr>(2);
        let mut drains = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            drains.push(spawn_drain(
                stderr,
                log.clone(),
                tail.clone(),
                addr_tx.clone(),
            ));
        }
        if let Some(stdout) = child.stdout.take() {
            drains.push(spawn_drain(
                stdout,
                log.clone(),
                tail.clone(),
                addr_tx.clone(),
            ));
        }
        drop(addr_tx);

        let mut server = Self {
            child,
            pid,
            // Replaced below once known.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tail,
            log_path: cfg.log_path.to_owned(),
            drains,
        };
        let deadline = tokio::time::sleep(cfg.startup_timeout);
        tokio::select! {
            addr = addr_rx.recv() => match addr {
                Some(addr) => server.addr = addr,
                None => {
                    let status = server.child.wait().await.ok();
                    bail!(
                        "server closed its output without printing `{LISTENING_MARKER}ADDR` ({})\n{}",
                        status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string()),
                        server.tail_text().await,
                    );
                }
            },
            status = server.child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                bail!("server exited before listening ({status})\n{}", server.tail_text().await);
            }
            () = deadline => {
                bail!(
                    "server did not print `{LISTENING_MARKER}ADDR` within {:?}\n{}",
                    cfg.startup_timeout,
                    server.tail_text().await,
                );
            }
        }
        Ok(server)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where the child's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `Err` with the exit status and output tail when the server is no longer running.
    pub async fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "server process exited unexpectedly ({status})\n{}",
                self.tail_text().await
            ),
            Err(e) => bail!("cannot query the server process: {e}"),
        }
    }

    /// The last lines of the child's output, formatted for an error message.
    pub async fn tail_text(&mut self) -> String {
        // Give the drain tasks a moment to read what a dying process wrote last.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            for d in &mut self.drains {
                let _ = tokio::time::timeout(Duration::from_secs(1), d).await;
            }
            self.drains.clear();
        }
        let tail = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        if tail.is_empty() {
            return format!("(server printed nothing; log: {})", self.log_path.display());
        }
        let mut s = format!(
            "--- last {} lines of server output ({}) ---\n",
            tail.len(),
            self.log_path.display()
        );
        for l in tail {
            s.push_str("  ");
            s.push_str(&l);
            s.push('\n');
        }
        s.push_str("---");
        s
    }

    /// Kills the child (SIGKILL via `Child::kill`) and waits for it; returns the log's line count.
    pub async fn shutdown(mut self) -> u64 {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let mut lines = 0;
        for d in self.drains.drain(..) {
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), d).await {
                lines += n;
            }
        }
        lines
    }
}

/// Copies one output stream of the child to the log file, keeps a tail, and reports the
/// listening address once seen. Returns the number of lines read.
fn spawn_drain<R: AsyncRead + Unpin + Send + 'static>(
    stream: R,
    log: Arc<tokio::sync::Mutex<tokio::fs::File>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    addr_tx: mpsc::Sender<SocketAddr>,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        let mut addr_tx = Some(addr_tx);
        let mut lines = 0u64;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            lines += 1;
            {
                let mut f = log.lock().await;
                let _ = f.write_all(&buf).await;
            }
            let line = strip_ansi(&String::from_utf8_lossy(&buf));
            let line = line.trim_end().to_owned();
            let found = addr_tx.is_some().then(|| parse_listening(&line)).flatten();
            if let (Some(addr), Some(tx)) = (found, &addr_tx) {
                let _ = tx.send(addr).await;
                addr_tx = None;
            }
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
        let _ = log.lock().await.flush().await;
        lines
    })
}

/// Extracts `ADDR` from a line containing `listening on http://ADDR`.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING_MARKER)? + LISTENING_MARKER.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) that a colouring logger may emit.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening("2024 INFO mission_control: listening on http://127.0.0.1:43121"),
            Some("127.0.0.1:43121".parse().unwrap())
        );
        assert_eq!(
            parse_listening("listening on http://127.0.0.1:80/ (sqlite)"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_listening("listening on http://[::1]:8080"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(parse_listening("starting"), None);
        let coloured = "\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening on http://127.0.0.1:5\u{1b}[0m";
        assert_eq!(
            parse_listening(&strip_ansi(coloured)),
            Some("127.0.0.1:5".parse().unwrap())
        );
    }
}
