//! What the agent reports in each heartbeat: a fixed status, or the verdict of a status
//! command run before every heartbeat (exit code 0 = `healthy`, anything else =
//! `degraded`). A command that cannot start or does not finish in time is a `degraded`
//! agent too: the reason travels with the report so it is logged.

use std::process::Stdio;
use std::time::Duration;

use crate::wire::HealthStatus;

/// The status to report, and why when it is not `healthy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The status sent.
    pub status: HealthStatus,
    /// Why the status is what it is, when a status command decided it.
    pub reason: Option<String>,
}

/// A shell command whose exit code tells the agent's health.
#[derive(Debug, Clone)]
pub struct StatusCommand {
    /// Run with `sh -c`.
    pub command: String,
    /// Killed, and the agent reported `degraded`, when it runs longer.
    pub timeout: Duration,
}

/// Where the reported status comes from.
#[derive(Debug, Clone)]
pub enum HealthSource {
    /// Always the same status.
    Fixed(HealthStatus),
    /// A status command, run before each heartbeat.
    Command(StatusCommand),
}

impl HealthSource {
    /// The report for the next heartbeat.
    pub async fn report(&self) -> HealthReport {
        match self {
            Self::Fixed(status) => HealthReport {
                status: *status,
                reason: None,
            },
            Self::Command(command) => command.run().await,
        }
    }
}

impl StatusCommand {
    /// Runs the command (stdin and stdout closed, stderr inherited) and maps its exit.
    pub async fn run(&self) -> HealthReport {
        let degraded = |reason: String| HealthReport {
            status: HealthStatus::Degraded,
            reason: Some(reason),
        };
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => return degraded(format!("the status command could not start: {e}")),
        };
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(exit)) if exit.success() => HealthReport {
                status: HealthStatus::Healthy,
                reason: None,
            },
            Ok(Ok(exit)) => degraded(match exit.code() {
                Some(code) => format!("the status command exited with code {code}"),
                None => "the status command was killed by a signal".to_owned(),
            }),
            Ok(Err(e)) => degraded(format!("waiting for the status command failed: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                degraded(format!(
                    "the status command did not finish within {} s",
                    self.timeout.as_secs_f64()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(text: &str) -> StatusCommand {
        StatusCommand {
            command: text.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn exit_code_zero_is_healthy() {
        let report = command("exit 0").run().await;
        assert_eq!(report.status, HealthStatus::Healthy);
        assert_eq!(report.reason, None);
    }

    #[tokio::test]
    async fn a_non_zero_exit_code_is_degraded_with_the_code_as_reason() {
        let report = command("exit 3").run().await;
        assert_eq!(report.status, HealthStatus::Degraded);
        assert!(report.reason.unwrap().contains("code 3"));
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_degraded_after_the_timeout() {
        let report = StatusCommand {
            command: "sleep 30".into(),
            timeout: Duration::from_millis(200),
        }
        .run()
        .await;
        assert_eq!(report.status, HealthStatus::Degraded);
        assert!(report.reason.unwrap().contains("did not finish"));
    }

    #[tokio::test]
    async fn a_fixed_source_reports_its_status() {
        let report = HealthSource::Fixed(HealthStatus::Degraded).report().await;
        assert_eq!(report.status, HealthStatus::Degraded);
    }
}
