//! The client against real OpenClaw gateways: `openclaw@2026.4.2` (protocol 3) and
//! `openclaw@2026.9.6` (protocol 4), installed by `scripts/openclaw-gateway install` and
//! started on 127.0.0.1 with a random port.
//!
//! They run when `MC_TEST_OPENCLAW=1` (as `scripts/test` sets after installing) and then
//! FAIL if the gateway is not installed. Without the variable they return at once, saying so
//! on stderr; `scripts/test` and `.ci/run` always set it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc_domain::token::Secret;
use mc_gateway::rpc::{ChatSend, CreateAgent, SessionDeletion, UpdateAgent, until_agent_visible};
use mc_gateway::testing::RealGateway;
use mc_gateway::{
    AgentConfigEntry, AuthRejection, DeviceIdentity, GatewayError, GatewayGeneration,
    GatewayHandle, HeartbeatSettings,
};

fn enabled(test: &str) -> bool {
    let on = std::env::var("MC_TEST_OPENCLAW").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "{test}: NOT RUN — set MC_TEST_OPENCLAW=1 (scripts/test does, after scripts/openclaw-gateway install)"
        );
    }
    on
}

/// Retries `call` while it fails transiently (a starting or restarting gateway), up to 90 s.
async fn eventually<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) if !error.is_permanent() && started.elapsed() < Duration::from_secs(90) => {
                eprintln!("{what}: retrying after transient error: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("{what} failed: {error:?}"),
        }
    }
}

/// One real gateway at a time: a cold start is CPU-bound (up to a minute on a busy 2-core
/// machine) and two at once starve each other into spurious timeouts.
static ONE_GATEWAY_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn exercise(version: &str, generation: GatewayGeneration) {
    let _turn = ONE_GATEWAY_AT_A_TIME.lock().await;
    let started = Instant::now();
    let gateway = RealGateway::start(version).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("openclaw@{version} listening after {:?}", started.elapsed());
    let data_dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(DeviceIdentity::load_or_create(data_dir.path()).unwrap());
    let handle = gateway.connect(identity.clone());

    let status = handle.wait_connected(Duration::from_secs(90)).await;
    assert!(
        status.connected,
        "not connected: {status:?}\n{}",
        gateway.log_tail(30)
    );
    assert_eq!(status.generation, Some(generation));
    assert_eq!(status.protocol, Some(generation.protocol()));
    assert_eq!(status.version.as_deref(), Some(version));
    assert!(status.paired);
    eprintln!(
        "openclaw@{version} handshake done after {:?}",
        started.elapsed()
    );

    let health = eventually("health", || handle.health()).await;
    assert!(health.ok, "{:?}", health.raw);

    let agent_id = format!("mc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let workspace = gateway
        .workspace_root()
        .join(format!("workspace-{agent_id}"))
        .display()
        .to_string();
    let create = CreateAgent {
        name: agent_id.clone(),
        workspace: workspace.clone(),
    };
    let created = eventually("agents.create", || handle.agents_create(&create)).await;
    assert_eq!(created.agent_id, agent_id);
    let duplicate = handle.agents_create(&create).await.unwrap_err();
    assert!(duplicate.is_already_exists(), "{duplicate:?}");
    let update = UpdateAgent {
        agent_id: agent_id.clone(),
        name: Some("Real Test Agent".into()),
        workspace: Some(workspace.clone()),
    };
    eventually("agents.update", || {
        until_agent_visible(|| handle.agents_update(&update))
    })
    .await;

    let soul = "# SOUL\nCareful and kind.\n";
    eventually("agents.files.set", || {
        handle.agents_files_set(&agent_id, "SOUL.md", soul)
    })
    .await;
    let read = eventually("agents.files.get", || {
        handle.agents_files_get(&agent_id, "SOUL.md")
    })
    .await;
    assert_eq!(read.file.content.as_deref(), Some(soul));
    let listing = eventually("agents.files.list", || handle.agents_files_list(&agent_id)).await;
    assert!(
        listing
            .files
            .iter()
            .any(|f| f.name == "SOUL.md" && !f.missing)
    );

    let tools = handle
        .agents_files_set(&agent_id, "TOOLS.md", "- `AUTH_TOKEN=abc`\n")
        .await;
    match generation {
        GatewayGeneration::V3 => {
            tools.unwrap();
        }
        GatewayGeneration::V4 => {
            let error = tools.unwrap_err();
            assert!(
                matches!(error, GatewayError::Unsupported { .. }),
                "{error:?}"
            );
            assert!(error.is_unsupported_file() && error.is_permanent());
        }
    }

    let snapshot = eventually("config.get", || handle.config_get()).await;
    assert!(snapshot.hash.is_some());
    let entry = AgentConfigEntry {
        id: agent_id.clone(),
        workspace: workspace.clone(),
        name: None,
        heartbeat: HeartbeatSettings {
            every: "10m".into(),
            target: "last".into(),
        },
    };
    let watch_restart = tokio::spawn(saw_disconnect(handle.clone(), Duration::from_secs(15)));
    // On v3 the gateway may restart before its answer reaches us: the call then fails as
    // transient and the retry finds the patch already applied. Either way it must land.
    eventually("config.patch", || {
        handle.apply_agent_config(std::slice::from_ref(&entry))
    })
    .await;
    if generation.restarts_after_config_patch() {
        assert!(
            watch_restart.await.unwrap(),
            "the v3 gateway should restart after config.patch\n{}",
            gateway.log_tail(30)
        );
    } else {
        watch_restart.abort();
    }
    // After a v3 restart the same handle must have reconnected by itself.
    let after = eventually("config.get after patch", || handle.config_get()).await;
    assert!(
        generation
            .configured_agent_ids(&after.config)
            .contains(&agent_id),
        "{}",
        after.config
    );
    let unchanged = eventually("config.patch again", || {
        handle.apply_agent_config(std::slice::from_ref(&entry))
    })
    .await;
    assert!(!unchanged, "a second apply must find nothing to change");

    let key = format!("agent:{agent_id}:main");
    eventually("sessions.patch", || {
        handle.sessions_patch(&key, Some("Real Test Agent"))
    })
    .await;
    eventually("sessions.reset", || handle.sessions_reset(&key)).await;
    let message = ChatSend {
        session_key: key.clone(),
        message: "Hello from the Mission Control test suite.".into(),
        deliver: false,
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    let chat = eventually("chat.send", || handle.chat_send(&message)).await;
    assert!(chat.run_id.is_some());
    let deletion = eventually("sessions.delete", || handle.sessions_delete(&key)).await;
    if generation.refuses_main_session_delete() {
        assert_eq!(deletion, SessionDeletion::MainSessionKept);
    }

    eventually("agents.delete", || handle.agents_delete(&agent_id)).await;
    let gone = handle.agents_files_list(&agent_id).await.unwrap_err();
    assert!(gone.is_missing_agent(), "{gone:?}");

    let mut wrong = gateway.client_config();
    wrong.token = Some(Secret::new("not-the-token"));
    let rejected = GatewayHandle::connect(wrong, identity);
    let error = rejected.health().await.unwrap_err();
    assert_eq!(
        error,
        GatewayError::AuthRejected(AuthRejection::TokenMismatch)
    );
    assert_eq!(
        rejected.status().last_error.as_deref(),
        Some("token rejected by the gateway")
    );
    eprintln!(
        "openclaw@{version}: all checks passed after {:?}",
        started.elapsed()
    );
}

/// Whether the handle reports a disconnect within `within` (polled every 5 ms).
async fn saw_disconnect(handle: GatewayHandle, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if !handle.status().connected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_2026_4_2_speaks_protocol_3_and_serves_every_provisioning_call() {
    if enabled("openclaw_2026_4_2") {
        exercise("2026.4.2", GatewayGeneration::V3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_2026_9_6_speaks_protocol_4_and_refuses_tools_md() {
    if enabled("openclaw_2026_9_6") {
        exercise("2026.9.6", GatewayGeneration::V4).await;
    }
}
