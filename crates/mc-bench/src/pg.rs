//! The PostgreSQL the replicas share: a throwaway server the bench starts from the system's
//! packages (`mc-testpg`, removed when the run ends, even on a crash), or an existing one
//! given by URL. Either way the bench works in a new schema of its own, so an existing
//! database is left as it was (the schema is dropped at the end).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use mc_testpg::TestPostgres;
use sqlx::Connection as _;

use crate::procfs::{self, PgProcesses};

/// Server settings the throwaway server runs with unless `--pg-setting` says otherwise:
/// PostgreSQL's own durable defaults, where the test fixture turns durability off for speed.
pub const DURABLE_SETTINGS: [(&str, &str); 3] = [
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
];

/// The database under test.
pub struct Database {
    /// The URL the replicas get (`search_path` set to the bench's schema).
    server_url: String,
    /// The URL without the schema, to create and drop it.
    admin_url: String,
    schema: String,
    throwaway: Option<TestPostgres>,
    /// Settings the throwaway server was started with (on top of the fixture's).
    settings: Vec<(String, String)>,
}

impl Database {
    /// Starts a throwaway server with `settings` (`name=value`) over the durable defaults.
    pub async fn throwaway(settings: &[(String, String)]) -> Result<Self> {
        let mut all: Vec<(String, String)> = DURABLE_SETTINGS
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        for (name, value) in settings {
            all.retain(|(n, _)| n != name);
            all.push((name.clone(), value.clone()));
        }
        let owned = all.clone();
        // initdb and pg_ctl block for seconds: off the runtime's threads.
        let pg = tokio::task::spawn_blocking(move || {
            let borrowed: Vec<(&str, &str)> = owned
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            TestPostgres::try_start_with(&borrowed)
        })
        .await
        .context("starting PostgreSQL")?
        .context("cannot start a throwaway PostgreSQL (scripts/ensure-postgres installs it)")?;
        let admin_url = pg.url("postgres");
        let mut db = Self::in_new_schema(admin_url).await?;
        db.throwaway = Some(pg);
        db.settings = all;
        Ok(db)
    }

    /// Uses the database at `url` (created beforehand by its owner), in a new schema.
    pub async fn existing(url: &str) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("--database-url must be a postgres:// or postgresql:// URL, got {url:?}");
        }
        Self::in_new_schema(url.to_owned()).await
    }

    async fn in_new_schema(admin_url: String) -> Result<Self> {
        let schema = format!("mc_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("cannot connect to {}", redact(&admin_url)))?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE SCHEMA {schema}"))?;
        let _ = conn.close().await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        Ok(Self {
            server_url: format!("{admin_url}{sep}options[search_path]={schema}"),
            admin_url,
            schema,
            throwaway: None,
            settings: Vec::new(),
        })
    }

    /// The URL for `mission-control serve --database-url`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The URL of the bench's schema when it can outlive the run (an existing server).
    pub fn kept_url(&self) -> Option<String> {
        self.throwaway.is_none().then(|| redact(&self.server_url))
    }

    /// What processes make up the server, for CPU accounting.
    pub fn processes(&self) -> PgProcesses {
        match self
            .throwaway
            .as_ref()
            .and_then(TestPostgres::postmaster_pid)
        {
            Some(pid) => PgProcesses::Postmaster(pid),
            None => PgProcesses::AllNamedPostgres,
        }
    }

    /// Size of the throwaway cluster's data directory; `None` for an existing server.
    pub fn data_bytes(&self) -> Option<u64> {
        self.throwaway
            .as_ref()
            .map(|pg| procfs::dir_size(&pg.data_dir()))
    }

    /// One line saying which server this is and how it is configured.
    pub fn describe(&self) -> String {
        match &self.throwaway {
            Some(pg) => {
                let settings: Vec<String> = self
                    .settings
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                format!(
                    "throwaway PostgreSQL {} from Debian's packages (`initdb` defaults: shared_buffers 128 MB; {})",
                    pg.major_version().unwrap_or_else(|| "?".to_owned()),
                    settings.join(", ")
                )
            }
            None => format!(
                "existing PostgreSQL at {} (schema {})",
                redact(&self.admin_url),
                self.schema
            ),
        }
    }

    /// Copies the throwaway server's log to `to` (it goes with the server).
    pub fn keep_log(&self, to: &Path) {
        if let Some(pg) = &self.throwaway {
            let _ = std::fs::copy(pg.log_file(), to);
        }
    }

    /// Drops the bench's schema (an existing server) or the whole server (a throwaway one).
    pub async fn remove(self) {
        match self.throwaway {
            Some(pg) => {
                // Stopping waits for the watchdog; keep it off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
            }
            None => {
                let dropped = async {
                    let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
                    sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                };
                match tokio::time::timeout(Duration::from_secs(60), dropped).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!(
                        "warning: cannot drop schema {} (drop it by hand): {e}",
                        self.schema
                    ),
                    Err(_) => eprintln!(
                        "warning: dropping schema {} timed out (drop it by hand)",
                        self.schema
                    ),
                }
            }
        }
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Parses `NAME=VALUE`.
pub fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_a_described_url() {
        assert_eq!(
            redact("postgres://bench:s3cret@db.example:5432/mc"),
            "postgres://bench:***@db.example:5432/mc"
        );
        assert_eq!(
            redact("postgres://mc@127.0.0.1/x"),
            "postgres://mc@127.0.0.1/x"
        );
    }

    #[test]
    fn settings_are_name_equals_value() {
        assert_eq!(
            parse_setting("log_min_duration_statement=20"),
            Ok(("log_min_duration_statement".to_owned(), "20".to_owned()))
        );
        assert!(parse_setting("fsync").is_err());
        assert!(parse_setting("=on").is_err());
    }
}
