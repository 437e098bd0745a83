//! The throwaway server itself: it serves SQL on its own port, gives each caller its own
//! schema, survives a stop and resume with its data, and leaves nothing behind.

use std::net::TcpStream;

use mc_testpg::TestPostgres;
use sqlx::Connection as _;

async fn scalar(url: &str, sql: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value
}

#[tokio::test]
async fn each_schema_is_new_and_separate() {
    let pg = TestPostgres::shared();
    let first = pg.fresh_schema_url().await;
    let second = pg.fresh_schema_url().await;
    assert_ne!(first, second);
    let mut conn = sqlx::PgConnection::connect(&first).await.unwrap();
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let tables = "SELECT count(*) FROM information_schema.tables WHERE table_name = 't' AND table_schema = current_schema()";
    assert_eq!(scalar(&first, tables).await, 1);
    assert_eq!(scalar(&second, tables).await, 0);
}

#[tokio::test]
async fn data_survives_a_stop_and_resume_and_everything_is_removed_on_drop() {
    let pg = TestPostgres::start();
    let url = pg.fresh_schema_url().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t AS SELECT 42 AS x")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    pg.stop();
    assert!(sqlx::PgConnection::connect(&url).await.is_err());
    pg.resume();
    assert_eq!(scalar(&url, "SELECT x::bigint FROM t").await, 42);

    let port = pg.port();
    let root = pg.root().to_owned();
    assert!(root.exists());
    drop(pg);
    assert!(!root.exists(), "{} is removed", root.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn settings_given_at_start_win_over_the_test_defaults_and_the_postmaster_is_found() {
    let pg = TestPostgres::try_start_with(&[("fsync", "on"), ("log_min_duration_statement", "25")])
        .unwrap();
    let url = pg.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let slow: String = sqlx::query_scalar("SHOW log_min_duration_statement")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Not overridden: still the test default.
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        (fsync.as_str(), slow.as_str(), sync.as_str()),
        ("on", "25ms", "off")
    );

    let postmaster = pg
        .postmaster_pid()
        .expect("postmaster.pid names the server");
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap();
    let parent: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(parent, postmaster, "backends are the postmaster's children");
    assert!(pg.major_version().is_some_and(|v| !v.is_empty()));
}

#[test]
fn a_setting_the_command_line_cannot_carry_is_refused_before_anything_starts() {
    for bad in [("fsync", "on -c port=1"), ("", "on"), ("x'y", "1")] {
        let error = TestPostgres::try_start_with(&[bad]).unwrap_err();
        assert!(
            error.to_string().contains("server setting"),
            "{bad:?}: {error}"
        );
    }
}
