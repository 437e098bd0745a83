//! The harness the storage specifications share: a fresh store per test on each backend,
//! `on_every_backend!`, which runs a specification once per backend, and
//! `on_shared_backend!` for rules only a database shared by replicas has. Test names read
//! `<specification>::<backend>`.

use std::future::Future;
use std::sync::Arc;

use mc_domain::agent::{Agent, AgentName};
use mc_domain::ids::{BoardId, GatewayId};
use mc_domain::time::Timestamp;
use mc_store::{PostgresStore, SqliteStore, Store};
use mc_testpg::TestPostgres;

/// Runs `test` on a fresh SQLite database in its own temporary file.
pub async fn with_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mc.db").display());
    let store = SqliteStore::open(&url, true).await.unwrap();
    test(Arc::new(store)).await;
}

/// Runs `test` on a fresh schema of the throwaway PostgreSQL server.
pub async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = TestPostgres::shared().fresh_schema_url().await;
    let store = PostgresStore::open(&url).await.unwrap();
    test(Arc::new(store)).await;
}

/// The fixed "now" of the specifications.
pub fn now() -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000)
}

/// A new agent named `name` on `gateway` (and `board`), never heard from.
pub fn new_agent(gateway: GatewayId, board: Option<BoardId>, name: &str) -> Agent {
    Agent::new(
        board,
        gateway,
        AgentName::parse(name, "name").unwrap(),
        now(),
    )
}

/// Runs each named specification against every backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($spec:ident),+ $(,)?) => {$(
        mod $spec {
            #[tokio::test]
            async fn sqlite() {
                $crate::common::with_sqlite(super::$spec).await;
            }

            #[tokio::test]
            async fn postgres() {
                $crate::common::with_postgres(super::$spec).await;
            }
        }
    )+};
}

/// Runs each named specification against the backend that replicas share (PostgreSQL): for
/// rules that exist because other processes write the same rows.
#[macro_export]
macro_rules! on_shared_backend {
    ($($spec:ident),+ $(,)?) => {$(
        mod $spec {
            #[tokio::test]
            async fn postgres() {
                $crate::common::with_postgres(super::$spec).await;
            }
        }
    )+};
}
