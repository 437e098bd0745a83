//! Two `mission-control serve` replicas on one PostgreSQL, as an operator runs them: the
//! built binary started twice on a throwaway server (`mc-testpg`), each on its own
//! loopback port and data directory.
//!
//! Any replica accepts any request (a token minted on one works on the other at once),
//! an SSE client on one sees the other's events, and when the replica that detects
//! offline agents is killed with SIGKILL, the survivor takes the duty over: the agent's
//! offline event reaches the survivor's stream within the missing tolerance, once, and
//! nothing the killed replica acknowledged is lost.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mc_testpg::TestPostgres;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The admin token both replicas share.
const ADMIN: &str = "replica-test-admin-token-0123456789-0123456789-0123456789";

/// The agent's missing tolerance in the test, seconds.
const TOLERANCE_SECONDS: u64 = 3;

/// The replicas' write-behind window, milliseconds.
const WRITE_BEHIND_MS: u64 = 200;

/// How long a new agent on an unmanaged gateway has to send its first heartbeat, seconds.
const CHECKIN_TIMEOUT_SECONDS: u64 = 2;

/// Slack for a busy two-core machine on top of the tolerance: the deadline ticker (100 ms),
/// the survivor's leadership check (1 s), the write-behind flush and the feed.
const TAKEOVER_SLACK: Duration = Duration::from_millis(2_500);

/// The `MC_*` variables `serve` reads; cleared so the test's environment cannot leak in.
const SERVE_ENV: [&str; 11] = [
    "MC_CONFIG",
    "MC_BIND",
    "MC_DATA_DIR",
    "MC_DATABASE_URL",
    "MC_ADMIN_TOKEN",
    "MC_BASE_URL",
    "MC_MAX_BODY_BYTES",
    "MC_WRITE_BEHIND_MS",
    "MC_TEMPLATES_DIR",
    "MC_CHECKIN_TIMEOUT_SECONDS",
    "MC_PROVISION_TIMEOUT_SECONDS",
];

/// One running `serve` process.
struct Replica {
    name: &'static str,
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl Replica {
    /// Starts `serve` on `127.0.0.1:0` and waits for its "listening" line.
    async fn start(name: &'static str, database_url: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mission-control"));
        for variable in SERVE_ENV {
            command.env_remove(variable);
        }
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(["--database-url", database_url, "--admin-token", ADMIN])
            .args(["--write-behind-ms", &WRITE_BEHIND_MS.to_string()])
            .args([
                "--checkin-timeout-seconds",
                &CHECKIN_TIMEOUT_SECONDS.to_string(),
            ])
            .env("RUST_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, mut address_rx) = mpsc::channel(1);
        let kept = Arc::clone(&logs);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':'))
                        .collect();
                    let _ = address_tx.send(address).await;
                }
                kept.lock().unwrap().push(line);
            }
        });
        let address = tokio::time::timeout(Duration::from_secs(60), address_rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "replica {name} did not start:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            });
        Self {
            name,
            child,
            base: format!("http://{address}"),
            logs,
            _data: data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    async fn kill(&mut self) {
        self.child
            .kill()
            .await
            .expect("SIGKILL reaches the replica");
    }

    /// What the process logged so far, for failure messages.
    fn log(&self) -> String {
        format!(
            "--- replica {} log ---\n{}",
            self.name,
            self.logs.lock().unwrap().join("\n")
        )
    }
}

/// The admin's HTTP calls to a replica.
struct Admin {
    http: reqwest::Client,
}

impl Admin {
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("the replica answers");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn post(&self, url: String, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(url).json(&body)).await
    }

    async fn created(&self, url: String, body: Value) -> Value {
        let (status, body) = self.post(url, body).await;
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    async fn get(&self, url: String) -> Value {
        let (status, body) = self.send(self.http.get(url)).await;
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    async fn metrics(&self, replica: &Replica) -> String {
        self.http
            .get(replica.url("/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap()
    }

    /// Waits until `replica`'s `/metrics` says `mc_leader <value>`.
    async fn await_leader_gauge(&self, replica: &Replica, value: u8) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .metrics(replica)
            .await
            .lines()
            .any(|line| line == format!("mc_leader {value}"))
        {
            assert!(
                Instant::now() < deadline,
                "replica {} never reported mc_leader {value}\n{}",
                replica.name,
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An agent heartbeat with `token` to `replica`; its HTTP status.
async fn heartbeat(http: &reqwest::Client, replica: &Replica, token: &str) -> StatusCode {
    http.post(replica.url("/api/v1/agent/heartbeat"))
        .header("X-Agent-Token", token)
        .json(&json!({"status": "healthy"}))
        .send()
        .await
        .expect("the replica answers")
        .status()
}

/// Follows `/api/v1/agents/stream` of one agent on `replica`: each event's type and the
/// instant it arrived.
async fn follow_agent_stream(
    http: &reqwest::Client,
    replica: &Replica,
    agent_id: &str,
) -> mpsc::UnboundedReceiver<(String, Instant)> {
    let mut response = http
        .get(replica.url(&format!("/api/v1/agents/stream?agent_id={agent_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), StatusCode::OK);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut pending = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line = pending[..end].trim_end().to_owned();
                pending.drain(..=end);
                if let Some(event) = line.strip_prefix("event:") {
                    let _ = tx.send((event.trim().to_owned(), Instant::now()));
                }
            }
        }
    });
    rx
}

/// Waits up to `within` for an event of type `wanted` on the stream.
async fn next_event(
    events: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    wanted: &str,
    within: Duration,
) -> Option<Instant> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Some((event, at))) if event == wanted => return Some(at),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_takes_over_offline_detection_from_a_killed_replica_and_loses_nothing() {
    let pg = TestPostgres::start();
    let database_url = pg.fresh_schema_url().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let admin = Admin { http: http.clone() };

    // A starts first and takes the lead; B follows.
    let mut a = Replica::start("A", &database_url).await;
    admin.await_leader_gauge(&a, 1).await;
    let b = Replica::start("B", &database_url).await;

    let gateway = admin
        .created(
            a.url("/api/v1/gateways"),
            json!({"name": "laptop", "url": ""}),
        )
        .await;
    let board = admin
        .created(
            a.url("/api/v1/boards"),
            json!({"name": "Ops", "slug": "ops", "description": "Operations",
                   "gateway_id": gateway["id"]}),
        )
        .await;
    let agent = admin
        .created(
            a.url("/api/v1/agents"),
            json!({"name": "Worker", "board_id": board["id"],
                   "heartbeat_config": {"interval_seconds": 1,
                                        "missing_tolerance": TOLERANCE_SECONDS}}),
        )
        .await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let minted = admin
        .created(
            a.url(&format!("/api/v1/agents/{agent_id}/token")),
            json!({}),
        )
        .await;
    let token_from_a = minted["token"].as_str().unwrap().to_owned();

    let mut events = follow_agent_stream(&http, &b, &agent_id).await;

    // A token minted on A works on B at once; the agent's first heartbeat (on B) reaches
    // the stream.
    assert_eq!(
        heartbeat(&http, &b, &token_from_a).await,
        StatusCode::OK,
        "{}",
        b.log()
    );
    assert!(
        next_event(&mut events, "agent.healthy", Duration::from_secs(5))
            .await
            .is_some(),
        "B's stream shows the first heartbeat\n{}",
        b.log()
    );

    // Rotated on B right after the first heartbeat: the new token works on A, the old one
    // stops working there.
    let (status, rotated) = admin
        .post(
            b.url(&format!("/api/v1/agents/{agent_id}/token")),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}\n{}", b.log());
    let token = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(heartbeat(&http, &a, &token).await, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while heartbeat(&http, &a, &token_from_a).await != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "the old token still works on A\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Heartbeats go to A only, for longer than the tolerance, while the rest happens: B
    // does not declare the agent offline meanwhile (it sees A's heartbeats through the
    // database).
    let heartbeats_until = Instant::now() + Duration::from_secs(TOLERANCE_SECONDS + 2);
    let heartbeating = {
        let (http, url, token) = (
            http.clone(),
            a.url("/api/v1/agent/heartbeat"),
            token.clone(),
        );
        tokio::spawn(async move {
            let mut last = Instant::now();
            while Instant::now() < heartbeats_until {
                let status = http
                    .post(&url)
                    .header("X-Agent-Token", &token)
                    .json(&json!({"status": "healthy"}))
                    .send()
                    .await
                    .expect("A answers")
                    .status();
                assert_eq!(status, StatusCode::OK);
                last = Instant::now();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            last
        })
    };

    // An agent created on B that never checks in: its wait started on B, but A (the
    // leader) gives it up, once.
    let silent = admin
        .created(
            b.url("/api/v1/agents"),
            json!({"name": "Silent", "board_id": board["id"]}),
        )
        .await;
    let silent_id = silent["id"].as_str().unwrap().to_owned();
    let mut silent_events = follow_agent_stream(&http, &b, &silent_id).await;
    assert!(
        next_event(
            &mut silent_events,
            "agent.offline",
            Duration::from_secs(CHECKIN_TIMEOUT_SECONDS) + TAKEOVER_SLACK,
        )
        .await
        .is_some(),
        "the wait started on B is given up by the leader\n{}\n{}",
        a.log(),
        b.log()
    );
    let silent_on_b = admin
        .get(b.url(&format!("/api/v1/agents/{silent_id}")))
        .await;
    assert_eq!(silent_on_b["status"], "offline", "{silent_on_b}");
    let silent_activity = admin
        .get(b.url(&format!("/api/v1/activity?agent_id={silent_id}")))
        .await;
    let gave_up = silent_activity["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "agent.offline")
        .count();
    assert_eq!(gave_up, 1, "{silent_activity}");

    // An agent created and updated on A, acknowledged just before A dies.
    let second = admin
        .created(
            a.url("/api/v1/agents"),
            json!({"name": "Second", "board_id": board["id"]}),
        )
        .await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let (status, updated) = admin
        .send(
            http.patch(a.url(&format!("/api/v1/agents/{second_id}")))
                .json(&json!({"name": "Second renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");

    let last_heartbeat = heartbeating.await.expect("the heartbeats are answered");
    while let Ok((event, _)) = events.try_recv() {
        assert_ne!(
            event,
            "agent.offline",
            "an agent heartbeating to A was declared offline\n{}\n{}",
            a.log(),
            b.log()
        );
    }

    admin.await_leader_gauge(&b, 0).await;
    a.kill().await;
    let killed_at = Instant::now();

    let offline = next_event(
        &mut events,
        "agent.offline",
        Duration::from_secs(TOLERANCE_SECONDS) + TAKEOVER_SLACK,
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "no agent.offline on B's stream within the tolerance of A's death\n{}\n{}",
            b.log(),
            a.log()
        )
    });
    assert!(offline > killed_at, "the offline event came after A died");
    let silence = offline.duration_since(last_heartbeat);
    // At most A's write-behind window of heartbeats is lost with it.
    assert!(
        silence + Duration::from_millis(WRITE_BEHIND_MS + 300)
            >= Duration::from_secs(TOLERANCE_SECONDS),
        "offline after only {silence:?} of silence"
    );
    assert!(
        offline.duration_since(killed_at)
            <= Duration::from_secs(TOLERANCE_SECONDS) + TAKEOVER_SLACK
    );
    admin.await_leader_gauge(&b, 1).await;

    // Recorded once, and nothing acknowledged by A is lost.
    let activity = admin
        .get(b.url(&format!("/api/v1/activity?agent_id={agent_id}")))
        .await;
    let offline_events = activity["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "agent.offline")
        .count();
    assert_eq!(offline_events, 1, "{activity}");
    let seen_by_b = admin
        .get(b.url(&format!("/api/v1/agents/{agent_id}")))
        .await;
    assert_eq!(seen_by_b["status"], "offline");
    let second_on_b = admin
        .get(b.url(&format!("/api/v1/agents/{second_id}")))
        .await;
    assert_eq!(second_on_b["name"], "Second renamed");
}
