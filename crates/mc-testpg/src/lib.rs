//! A throwaway PostgreSQL server for tests, started from the system's PostgreSQL packages.
//!
//! [`TestPostgres::start`] runs `initdb` in a temporary directory and `pg_ctl start` on
//! `127.0.0.1` and a free port (its Unix socket stays inside the temporary directory), so
//! nothing on the machine is touched and tests never share a port. Each test then takes a
//! fresh schema with [`TestPostgres::fresh_schema_url`]; [`TestPostgres::shared`] is one
//! server per test process for that.
//!
//! Cleanup does not depend on destructors running: every server has a small watchdog
//! process holding the read end of a pipe whose write end only this process has. When
//! the server is dropped, or when the test process ends in any way (including a panic,
//! `abort` or a signal), the pipe closes and the watchdog stops PostgreSQL and removes the
//! directory.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI does), `initdb` and
//! `pg_ctl` run as the `postgres` system user (or `nobody`) through `runuser`, and the
//! temporary directory is handed to that user.
//!
//! When the binaries are missing the fixture fails with the command that installs them:
//! a test that needs PostgreSQL never passes silently without it.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use sqlx::Connection as _;

/// The superuser `initdb` creates; tests connect as this role without a password.
pub const SUPERUSER: &str = "mc";

/// How to get the binaries, shown whenever they cannot be found.
pub const INSTALL_HINT: &str = "install PostgreSQL's server package with \
    `apt-get install postgresql` (as root, or with sudo), or run `scripts/test`, which \
    installs it when it is missing";

/// Where Debian's packages put the server binaries (`/usr/lib/postgresql/<major>/bin`).
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";

/// The watchdog: waits until its standard input closes (this process dropped the server
/// or ended), then stops the server and removes the directory. It ignores the terminal's
/// signals so that Ctrl-C on `cargo test` still cleans up.
const WATCHDOG_SCRIPT: &str = r#"trap '' INT TERM HUP
cat > /dev/null
root="$1"
shift
"$@" > /dev/null 2>&1
rm -rf "$root""#;

/// Why a throwaway server could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum TestPgError {
    /// `initdb`/`pg_ctl` are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in {DEBIAN_PREFIX}/*/bin: {INSTALL_HINT}"
    )]
    BinariesMissing,
    /// Running as root, and no unprivileged user to run PostgreSQL as.
    #[error(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
    )]
    NoUnprivilegedUser,
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// A PostgreSQL tool exited with an error.
    #[error("{what} failed ({status}):\n{output}")]
    Tool {
        /// The step (e.g. `initdb`).
        what: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed, and the server log when there is one.
        output: String,
    },
    /// A server setting given to [`TestPostgres::try_start_with`] that cannot be passed on.
    #[error(
        "server setting {0:?} refused: names and values may hold only letters, digits and _ . - : / %"
    )]
    Setting(String),
    /// The server did not accept SQL.
    #[error("the throwaway PostgreSQL did not accept a statement: {0}")]
    Sql(#[from] sqlx::Error),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestPgError {
    let what = what.into();
    move |source| TestPgError::Io { what, source }
}

/// The system user PostgreSQL runs as when this process is root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// The located binaries and how to run them.
#[derive(Debug, Clone)]
struct Tools {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
}

impl Tools {
    fn locate() -> Result<Self, TestPgError> {
        let bin_dir = find_bin_dir().ok_or(TestPgError::BinariesMissing)?;
        let run_as = if running_as_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        Ok(Self { bin_dir, run_as })
    }

    /// The command line running `tool` (as the unprivileged user when root).
    fn argv(&self, tool: &str) -> Vec<String> {
        let program = self.bin_dir.join(tool).display().to_string();
        match &self.run_as {
            Some(user) => vec![
                "runuser".into(),
                "-u".into(),
                user.name.clone(),
                "--".into(),
                program,
            ],
            None => vec![program],
        }
    }

    fn command(&self, tool: &str) -> Command {
        let argv = self.argv(tool);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).stdin(Stdio::null());
        command
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The first directory holding both `initdb` and `pg_ctl`: `PATH` first, then Debian's
/// versioned directories, newest major version first.
fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    find_bin_dir_in(&on_path, Path::new(DEBIAN_PREFIX))
}

fn find_bin_dir_in(on_path: &[PathBuf], debian_prefix: &Path) -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = on_path.iter().find(|dir| has_tools(dir)) {
        return Some(dir.clone());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian_prefix)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn unprivileged_user() -> Result<RunAs, TestPgError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io_error("reading /etc/passwd"))?;
    let users: Vec<RunAs> = passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(RunAs {
                name: (*fields.first()?).to_owned(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .collect();
    ["postgres", "nobody"]
        .iter()
        .find_map(|wanted| users.iter().find(|u| u.name == *wanted).cloned())
        .ok_or(TestPgError::NoUnprivilegedUser)
}

fn free_port() -> Result<u16, TestPgError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_error("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("reading a bound port"))?
        .port();
    Ok(port)
}

fn run(what: &'static str, mut command: Command, log: Option<&Path>) -> Result<(), TestPgError> {
    let output: Output = command
        .output()
        .map_err(io_error(format!("running {what}")))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if let Some(log) = log.and_then(|path| std::fs::read_to_string(path).ok()) {
        text.push_str("\n--- server log ---\n");
        text.push_str(&log);
    }
    Err(TestPgError::Tool {
        what,
        status: output.status.to_string(),
        output: text,
    })
}

/// A PostgreSQL server of its own, in a temporary directory, for the life of this value.
#[derive(Debug)]
pub struct TestPostgres {
    tools: Tools,
    root: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    watchdog: Mutex<Option<Child>>,
}

impl TestPostgres {
    /// Starts a new server, or panics saying why (with [`INSTALL_HINT`] when PostgreSQL is
    /// not installed).
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start a throwaway PostgreSQL: {e}"))
    }

    /// The server shared by every test of this process, started on first use.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// Starts a new server.
    pub fn try_start() -> Result<Self, TestPgError> {
        Self::try_start_with(&[])
    }

    /// Starts a new server with server settings (`name`, `value`) applied after the test
    /// defaults, so they win over them: a benchmark wants `fsync=on` where tests want speed.
    /// A name or value that the server's command line could not carry is refused.
    pub fn try_start_with(settings: &[(&str, &str)]) -> Result<Self, TestPgError> {
        for (name, value) in settings {
            let plain = |text: &str| {
                !text.is_empty()
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-:/%".contains(c))
            };
            if !plain(name) || !plain(value) {
                return Err(TestPgError::Setting(format!("{name}={value}")));
            }
        }
        let tools = Tools::locate()?;
        let root = tempfile::Builder::new()
            .prefix("mc-testpg-")
            .tempdir()
            .map_err(io_error("creating a temporary directory"))?
            // The watchdog owns the directory's removal from here on.
            .keep();
        if let Some(user) = &tools.run_as {
            std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid)).map_err(io_error(
                format!("handing {} to {}", root.display(), user.name),
            ))?;
        }
        let mut server = Self {
            watchdog: Mutex::new(None),
            port: 0,
            settings: settings
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            root,
            tools,
        };
        server.arm_watchdog()?;
        let mut initdb = server.tools.command("initdb");
        initdb
            .arg("--pgdata")
            .arg(server.data_dir())
            .args(["--username", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        run("initdb", initdb, None)?;
        // A free port can be taken by someone else before the server binds it: retry.
        let mut attempts = 1;
        loop {
            server.port = free_port()?;
            match server.resume_inner() {
                Ok(()) => return Ok(server),
                Err(_) if attempts < 3 => attempts += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// The cluster's data directory (inside [`TestPostgres::root`]).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server's log file (inside [`TestPostgres::root`]).
    pub fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The postmaster's process id, from `postmaster.pid`; `None` while it is not running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The server's major version (`PG_VERSION` of the cluster), e.g. `15`.
    pub fn major_version(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir().join("PG_VERSION"))
            .ok()
            .map(|v| v.trim().to_owned())
    }

    fn arm_watchdog(&self) -> Result<(), TestPgError> {
        let mut stop = self.tools.argv("pg_ctl");
        stop.extend([
            "stop".to_owned(),
            "--pgdata".to_owned(),
            self.data_dir().display().to_string(),
            "--mode=immediate".to_owned(),
        ]);
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("mc-testpg-watchdog")
            .arg(&self.root)
            .args(&stop)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("starting the cleanup watchdog (sh)"))?;
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    /// The port the server listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the cluster, its log and its socket.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty place for one test's tables, as a URL: a fresh schema of the server's
    /// `postgres` database, with connections made from the URL seeing only that schema
    /// (`search_path`). A schema costs a millisecond where `CREATE DATABASE` copies a
    /// template of several megabytes, and it isolates unqualified names just as well.
    pub async fn fresh_schema_url(&self) -> String {
        self.try_fresh_schema_url()
            .await
            .unwrap_or_else(|e| panic!("cannot create a test schema: {e}"))
    }

    /// A new, empty schema's URL (see [`TestPostgres::fresh_schema_url`]).
    pub async fn try_fresh_schema_url(&self) -> Result<String, TestPgError> {
        let name = format!("mc_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(format!(
            "{}?options[search_path]={name}",
            self.url("postgres")
        ))
    }

    /// Stops the server (a fast shutdown: clients are disconnected, committed data is
    /// kept), as an outage would. [`TestPostgres::resume`] brings it back.
    pub fn stop(&self) {
        let mut pg_ctl = self.tools.command("pg_ctl");
        pg_ctl
            .arg("stop")
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--mode=fast", "--wait"]);
        run("pg_ctl stop", pg_ctl, Some(&self.log_file()))
            .unwrap_or_else(|e| panic!("cannot stop the throwaway PostgreSQL: {e}"));
    }

    /// Starts the server again on the same port after [`TestPostgres::stop`].
    pub fn resume(&self) {
        self.resume_inner()
            .unwrap_or_else(|e| panic!("cannot restart the throwaway PostgreSQL: {e}"));
    }

    fn resume_inner(&self) -> Result<(), TestPgError> {
        // Durability is not what these tests measure: fsync off makes every commit and
        // CREATE DATABASE cheap.
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c max_connections=300 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off",
            self.port,
            self.root.display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let mut pg_ctl = self.tools.command("pg_ctl");
        pg_ctl
            .arg("start")
            .arg("--pgdata")
            .arg(self.data_dir())
            .arg("--log")
            .arg(self.log_file())
            .args(["--wait", "--timeout=60", "-o", &options]);
        run("pg_ctl start", pg_ctl, Some(&self.log_file()))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = watchdog {
            // Closing its standard input tells the watchdog to stop the server and clean
            // up; waiting means the next test starts with the server gone.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path, tools: &[&str]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        for tool in tools {
            std::fs::write(dir.join(tool), "").unwrap();
        }
        dir.to_owned()
    }

    #[test]
    fn binaries_on_path_come_first() {
        let root = tempfile::tempdir().unwrap();
        let on_path = install(&root.path().join("path"), &["initdb", "pg_ctl"]);
        install(&root.path().join("lib/15/bin"), &["initdb", "pg_ctl"]);
        let found = find_bin_dir_in(std::slice::from_ref(&on_path), &root.path().join("lib"));
        assert_eq!(found, Some(on_path));
    }

    #[test]
    fn otherwise_the_newest_debian_major_version_with_both_tools_is_used() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        install(&lib.join("9/bin"), &["initdb", "pg_ctl"]);
        let newest = install(&lib.join("15/bin"), &["initdb", "pg_ctl"]);
        install(&lib.join("16/bin"), &["initdb"]);
        let half = install(&root.path().join("path"), &["pg_ctl"]);
        assert_eq!(find_bin_dir_in(&[half], &lib), Some(newest));
    }

    #[test]
    fn without_binaries_the_error_says_how_to_install_them() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(find_bin_dir_in(&[], &root.path().join("lib")), None);
        let message = TestPgError::BinariesMissing.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("scripts/test"), "{message}");
    }
}
