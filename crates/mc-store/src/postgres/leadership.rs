//! Leadership on PostgreSQL: the process that holds a session-level advisory lock does the
//! singleton work (offline detection) for every replica on the database.
//!
//! The lock lives on a connection of its own, outside the pool, so it is held exactly as
//! long as that session: when the process dies (SIGKILL included) its socket closes, the
//! server ends the session and the lock is free for a survivor's next attempt. The key is
//! scoped to the current schema (advisory locks are already per database), so databases
//! or schemas sharing one server never compete.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use tokio::sync::Mutex;

use super::map_err;
use crate::{StoreError, StoreResult};

/// The first half of the lock key ("mc" in ASCII); the second is the schema's hash.
const LEADER_LOCK_CLASS: i32 = 0x6d63;

/// How long opening the lock's connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The lock's session, and whether it holds the lock.
#[derive(Debug, Default)]
pub(super) struct Leadership {
    session: Mutex<Option<Session>>,
}

#[derive(Debug)]
struct Session {
    connection: PgConnection,
    holds: bool,
}

impl Leadership {
    /// True while this process holds the lock: confirms a held lock (its session still
    /// answers), or tries to take it. A session that stopped answering is dropped, with the
    /// lock; the next call starts a new one.
    pub(super) async fn hold(&self, options: &PgConnectOptions) -> StoreResult<bool> {
        let mut session = self.session.lock().await;
        if session.is_none() {
            let connection =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("leadership: no connection within 3 s".into())
                    })?
                    .map_err(map_err)?;
            *session = Some(Session {
                connection,
                holds: false,
            });
        }
        let Some(current) = session.as_mut() else {
            return Ok(false);
        };
        let answer = if current.holds {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut current.connection)
                .await
                .map(|_| true)
        } else {
            sqlx::query_scalar::<_, bool>(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
            )
            .bind(LEADER_LOCK_CLASS)
            .fetch_one(&mut current.connection)
            .await
        };
        match answer {
            Ok(holds) => {
                current.holds = holds;
                Ok(holds)
            }
            Err(error) => {
                *session = None;
                Err(map_err(error))
            }
        }
    }
}
