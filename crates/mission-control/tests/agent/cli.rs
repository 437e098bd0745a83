//! `mission-control agent` as an operator runs it: the built binary against the real
//! server, its exit codes and messages.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::helpers::{Front, Scripted, TestServer, closed_port_url, eventually, unique};

/// The environment variables the agent command reads; cleared so the test's own
/// environment cannot leak in.
const AGENT_ENV: [&str; 9] = [
    "MC_AGENT_WORKSPACE",
    "MC_BASE_URL",
    "MC_AGENT_TOKEN",
    "MC_AGENT_TOKEN_FILE",
    "MC_ENROLL_TOKEN",
    "MC_AGENT_NAME",
    "MC_BOARD_ID",
    "MC_STATUS_COMMAND",
    "RUST_LOG",
];

/// `mission-control agent <args>` with piped output, killed if the test drops it.
fn agent(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mission-control"));
    command.arg("agent").args(args);
    for name in AGENT_ENV {
        command.env_remove(name);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// How a finished command ended.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn finish(child: Child) -> Finished {
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the agent command ends within 30 s")
        .expect("the agent command's output is readable");
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn run_to_end(mut command: Command) -> Finished {
    finish(command.spawn().expect("the binary starts")).await
}

fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the agent is still running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test]
async fn enrollment_keeps_the_agents_own_token_and_the_next_run_reuses_it() {
    let server = TestServer::spawn().await;
    let board_id = server.board().await;
    let enrollment = server.enrollment_token(board_id, 5).await;
    let front = Front::start(Some(&server.address), Vec::new()).await;
    let workspace = tempfile::tempdir().unwrap();
    let name = unique("worker");
    std::fs::write(
        workspace.path().join("TOOLS.md"),
        format!(
            "# Tools\n\n- `BASE_URL={}`\n- `AGENT_NAME={name}`\n- `BOARD_ID={board_id}`\n",
            front.address
        ),
    )
    .unwrap();
    let workspace_arg = workspace.path().to_str().unwrap();
    let heartbeat = || {
        let mut command = agent(&["heartbeat", "--workspace", workspace_arg]);
        command.env("MC_ENROLL_TOKEN", enrollment.expose());
        command
    };

    let first = run_to_end(heartbeat()).await;
    assert_eq!(first.code, Some(0), "stderr: {}", first.stderr);
    assert!(
        first.stdout.contains(&format!("agent: {name}")),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("status: healthy"), "{}", first.stdout);
    assert!(first.stdout.contains("enrolled:"), "{}", first.stdout);
    let token_file = workspace.path().join(".mission-control/agent-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let saved = std::fs::read_to_string(&token_file).unwrap();

    let second = run_to_end(heartbeat()).await;
    assert_eq!(second.code, Some(0), "stderr: {}", second.stderr);
    assert!(
        second.stdout.contains("status: healthy"),
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("enrolled:"), "{}", second.stdout);

    let seen = front.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/api/v1/agents/heartbeat", "/api/v1/agent/heartbeat"]
    );
    assert_eq!(
        seen[1].agent_token.as_deref(),
        Some(saved.trim()),
        "the saved token is used"
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        saved,
        "kept, not replaced"
    );
    let agents = server
        .client
        .list_agents_on_board(&server.admin, board_id)
        .await
        .unwrap();
    assert_eq!(agents.total, 1);
    assert_eq!(agents.items[0].name, name);
    let tokens = server
        .client
        .list_enrollment_tokens(&server.admin, board_id)
        .await
        .unwrap();
    assert_eq!(tokens.items[0].uses, 1, "enrolled once");
}

async fn a_signal_sends_a_final_offline_heartbeat(signal: &str) {
    let server = TestServer::spawn().await;
    let (agent_id, token) = server.agent(1).await;
    let mut command = agent(&["run", "--base-url", &server.address]);
    command.env("MC_AGENT_TOKEN", token.expose());
    let child = command.spawn().expect("the binary starts");
    eventually("the agent reports healthy", || async {
        server.status_of(agent_id).await == "healthy"
    })
    .await;

    send_signal(&child, signal);
    let finished = finish(child).await;

    assert_eq!(finished.code, Some(0), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains("reported offline"),
        "{}",
        finished.stderr
    );
    assert_eq!(server.status_of(agent_id).await, "offline");
}

#[tokio::test]
async fn sigterm_sends_a_final_offline_heartbeat_before_exiting() {
    a_signal_sends_a_final_offline_heartbeat("TERM").await;
}

#[tokio::test]
async fn sigint_sends_a_final_offline_heartbeat_before_exiting() {
    a_signal_sends_a_final_offline_heartbeat("INT").await;
}

#[tokio::test]
async fn a_refused_token_stops_run_with_exit_code_3_and_what_to_do() {
    let server = TestServer::spawn().await;
    let mut command = agent(&["run", "--base-url", &server.address]);
    command.env("MC_AGENT_TOKEN", "a-token-the-server-never-issued");

    let finished = run_to_end(command).await;

    assert_eq!(finished.code, Some(3), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("401"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--enroll-token"),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("a-token-the-server-never-issued"),
        "no secret in messages"
    );
}

#[tokio::test]
async fn a_workspace_without_credentials_exits_2_naming_what_is_missing() {
    let workspace = tempfile::tempdir().unwrap();
    let workspace_arg = workspace.path().to_str().unwrap();
    let command = agent(&[
        "heartbeat",
        "--workspace",
        workspace_arg,
        "--base-url",
        "http://127.0.0.1:9",
    ]);

    let finished = run_to_end(command).await;

    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains("no agent credentials"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("TOOLS.md"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(workspace_arg),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn an_unreachable_server_exits_1_naming_the_url() {
    let url = closed_port_url().await;
    let mut command = agent(&["heartbeat", "--base-url", &url]);
    command.env("MC_AGENT_TOKEN", "some-token");

    let finished = run_to_end(command).await;

    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains("cannot reach"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains(&url), "{}", finished.stderr);
}

#[tokio::test]
async fn a_base_url_that_is_not_http_exits_2() {
    let mut command = agent(&["heartbeat", "--base-url", "ftp://mission-control.example"]);
    command.env("MC_AGENT_TOKEN", "some-token");

    let finished = run_to_end(command).await;

    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains("invalid base URL"),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn a_malformed_answer_exits_1_naming_the_problem() {
    let front = Front::start(
        None,
        vec![Scripted::Body {
            status: 200,
            body: "<html>a web server, not Mission Control</html>",
        }],
    )
    .await;
    let mut command = agent(&["heartbeat", "--base-url", &front.address]);
    command.env("MC_AGENT_TOKEN", "some-token");

    let finished = run_to_end(command).await;

    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains("malformed answer"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("base URL"), "{}", finished.stderr);
}

#[tokio::test]
async fn a_wrong_base_url_path_is_called_out() {
    let server = TestServer::spawn().await;
    let (_, token) = server.agent(60).await;
    let url = format!("{}/not-mission-control", server.address);
    let mut command = agent(&["heartbeat", "--base-url", &url]);
    command.env("MC_AGENT_TOKEN", token.expose());

    let finished = run_to_end(command).await;

    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("404"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("check the base URL"),
        "{}",
        finished.stderr
    );
}
