//! The activity log: one durable, ordered record per thing that happened. Ids increase
//! monotonically; they are the resume point of event streams.
//!
//! Besides an agent's own changes and its liveness transitions, the log tells how each
//! provisioning job progresses (queued, retrying, done, failed) and when an agent that did
//! not check in is woken again: [`JobProgress`] and [`wakeup_sent`] word those events and
//! give them their `data`, one shape for every backend and every reader.

use serde_json::{Value, json};

use crate::agent::AgentStatus;
use crate::ids::{AgentId, BoardId};
use crate::liveness::{JobInProgress, MAX_WAKES};
use crate::time::Timestamp;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// An agent was created.
    AgentCreated,
    /// An agent's settings changed.
    AgentUpdated,
    /// An agent was deleted.
    AgentDeleted,
    /// An agent got a new token; the old one stopped working.
    AgentTokenRotated,
    /// An agent's computed status changed.
    AgentStatusChanged(AgentStatus),
    /// A provisioning job was queued for an agent.
    ProvisionQueued,
    /// A provisioning attempt failed with a transient error; the job is tried again.
    ProvisionRetrying,
    /// A provisioning job completed.
    ProvisionDone,
    /// A provisioning job ended without success (a permanent error, or it gave up).
    ProvisionFailed,
    /// An agent that did not check in after a wake was woken again.
    WakeupSent,
}

impl EventType {
    /// Every event type, in a stable order.
    pub const ALL: [Self; 13] = [
        Self::AgentCreated,
        Self::AgentUpdated,
        Self::AgentDeleted,
        Self::AgentTokenRotated,
        Self::AgentStatusChanged(AgentStatus::Provisioning),
        Self::AgentStatusChanged(AgentStatus::Healthy),
        Self::AgentStatusChanged(AgentStatus::Degraded),
        Self::AgentStatusChanged(AgentStatus::Offline),
        Self::ProvisionQueued,
        Self::ProvisionRetrying,
        Self::ProvisionDone,
        Self::ProvisionFailed,
        Self::WakeupSent,
    ];

    /// The event type with wire form `name`, if there is one.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The wire form, e.g. `agent.offline`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgentCreated => "agent.created",
            Self::AgentUpdated => "agent.updated",
            Self::AgentDeleted => "agent.deleted",
            Self::AgentTokenRotated => "agent.token_rotated",
            Self::AgentStatusChanged(AgentStatus::Provisioning) => "agent.provisioning",
            Self::AgentStatusChanged(AgentStatus::Healthy) => "agent.healthy",
            Self::AgentStatusChanged(AgentStatus::Degraded) => "agent.degraded",
            Self::AgentStatusChanged(AgentStatus::Offline) => "agent.offline",
            // Job overlays are never published as transitions (see `AgentStatus`); the
            // names exist only so that the mapping is total.
            Self::AgentStatusChanged(AgentStatus::Updating) => "agent.updating",
            Self::AgentStatusChanged(AgentStatus::Deleting) => "agent.deleting",
            Self::ProvisionQueued => "agent.provision.queued",
            Self::ProvisionRetrying => "agent.provision.retrying",
            Self::ProvisionDone => "agent.provision.done",
            Self::ProvisionFailed => "agent.provision.failed",
            Self::WakeupSent => "agent.wakeup.sent",
        }
    }
}

/// An event about to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    /// What happened.
    pub event_type: EventType,
    /// One English sentence, ending with a period.
    pub message: String,
    /// The agent it is about.
    pub agent_id: Option<AgentId>,
    /// The board it belongs to.
    pub board_id: Option<BoardId>,
    /// Structured details (e.g. `{"from": "healthy", "to": "offline"}`).
    pub data: Option<Value>,
    /// When it happened.
    pub created_at: Timestamp,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityEvent {
    /// Monotonically increasing id.
    pub id: i64,
    /// Wire form of the event type.
    pub event_type: String,
    /// The sentence.
    pub message: String,
    /// The agent it is about.
    pub agent_id: Option<AgentId>,
    /// The board it belongs to.
    pub board_id: Option<BoardId>,
    /// Structured details.
    pub data: Option<Value>,
    /// When it happened.
    pub created_at: Timestamp,
}

impl ActivityEvent {
    /// For a provisioning progress event: the job it is about and the job's kind, read
    /// from its `data`.
    pub fn provision_job(&self) -> Option<(i64, JobInProgress)> {
        let data = self.data.as_ref()?;
        let job = data.get("job")?.as_i64()?;
        let action = JobInProgress::from_wire(data.get("action")?.as_str()?)?;
        Some((job, action))
    }
}

/// The event and sentence for a liveness transition of the agent `name`.
pub fn status_transition(
    name: &str,
    from: AgentStatus,
    to: AgentStatus,
    silent_seconds: Option<u32>,
) -> (EventType, String) {
    let message = match (from, to) {
        (_, AgentStatus::Offline) => match silent_seconds {
            Some(s) => format!("{name} went offline: no heartbeat for more than {s} s."),
            None => format!("{name} reported offline."),
        },
        (AgentStatus::Offline, _) => format!("{name} is back: {}.", to.as_str()),
        (AgentStatus::Provisioning, _) => {
            format!("{name} sent its first heartbeat: {}.", to.as_str())
        }
        _ => format!("{name} is now {} (was {}).", to.as_str(), from.as_str()),
    };
    (EventType::AgentStatusChanged(to), message)
}

/// Where a provisioning job put the agent on its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPlacement<'a> {
    /// The agent's id on the gateway.
    pub gateway_agent_id: &'a str,
    /// Its workspace directory on the gateway host.
    pub workspace_path: &'a str,
    /// Its main session key (the agent's `openclaw_session_id`).
    pub session_key: &'a str,
}

/// Where a provisioning job stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStep<'a> {
    /// Stored; its first attempt is due.
    Queued,
    /// An attempt failed with a transient error; the next one is due at `next_attempt_at`.
    Retrying {
        /// Why the attempt failed.
        error: &'a str,
        /// When the job is tried again.
        next_attempt_at: Timestamp,
    },
    /// Completed, perhaps with a warning; a create or update tells where the agent is.
    Done {
        /// Something that went wrong without failing the job (e.g. the agent did not start).
        warning: Option<&'a str>,
        /// Where the agent now lives on its gateway.
        placement: Option<JobPlacement<'a>>,
    },
    /// Ended without success: a permanent error, or its bound passed.
    Failed {
        /// Why.
        error: &'a str,
    },
}

/// The agent a provisioning event is about. `name` is `None` once the agent is gone from
/// the store (a clean-up job outliving it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSubject<'a> {
    /// The agent.
    pub agent_id: AgentId,
    /// Its board.
    pub board_id: Option<BoardId>,
    /// Its name.
    pub name: Option<&'a str>,
}

/// One step of one provisioning job, as its activity event tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgress<'a> {
    /// The job's queue id.
    pub job: i64,
    /// What the job does.
    pub action: JobInProgress,
    /// Attempts made so far, this one included (0 while queued).
    pub attempt: u32,
    /// Where it stands.
    pub step: JobStep<'a>,
}

impl JobProgress<'_> {
    /// The event recording this step at `at`: `agent.provision.queued`, `.retrying`,
    /// `.done` or `.failed`, with `data` `{job, action, attempt}` plus `error`,
    /// `next_attempt_at` and `placement` where they apply.
    pub fn event(&self, subject: JobSubject<'_>, at: Timestamp) -> NewActivity {
        let who = match subject.name {
            Some(name) => format!("Agent {name}"),
            None => format!("Agent {}", subject.agent_id),
        };
        let done = match self.action {
            JobInProgress::Create => "created on its gateway",
            JobInProgress::Update => "updated on its gateway",
            JobInProgress::Delete => "removed from its gateway",
        };
        let (job, attempt) = (self.job, self.attempt);
        let mut data = json!({
            "job": job,
            "action": self.action.as_str(),
            "attempt": attempt,
        });
        let (event_type, message) = match self.step {
            JobStep::Queued => (
                EventType::ProvisionQueued,
                format!("{who} is queued to be {done} (job {job})."),
            ),
            JobStep::Retrying {
                error,
                next_attempt_at,
            } => {
                data["error"] = json!(error);
                data["next_attempt_at"] = json!(next_attempt_at.to_rfc3339());
                (
                    EventType::ProvisionRetrying,
                    sentence(format!(
                        "{who} could not be {done} (job {job}, attempt {attempt}); it is tried \
                         again at {}: {error}",
                        next_attempt_at.to_rfc3339()
                    )),
                )
            }
            JobStep::Done { warning, placement } => {
                if let Some(warning) = warning {
                    data["error"] = json!(warning);
                }
                if let Some(placement) = placement {
                    data["placement"] = json!({
                        "gateway_agent_id": placement.gateway_agent_id,
                        "workspace_path": placement.workspace_path,
                        "openclaw_session_id": placement.session_key,
                    });
                }
                let message = match warning {
                    Some(warning) => sentence(format!(
                        "{who} was {done} (job {job}, attempt {attempt}), with a warning: {warning}"
                    )),
                    None => format!("{who} was {done} (job {job}, attempt {attempt})."),
                };
                (EventType::ProvisionDone, message)
            }
            JobStep::Failed { error } => {
                data["error"] = json!(error);
                (
                    EventType::ProvisionFailed,
                    sentence(format!(
                        "{who} could not be {done} (job {job}, attempt {attempt}); the job \
                         stopped: {error}"
                    )),
                )
            }
        };
        NewActivity {
            event_type,
            message,
            agent_id: Some(subject.agent_id),
            board_id: subject.board_id,
            data: Some(data),
            created_at: at,
        }
    }
}

/// The event recording that the agent `name` was woken again at `at` (wake `wake` of
/// [`MAX_WAKES`]) and has until `deadline` to check in.
pub fn wakeup_sent(
    agent_id: AgentId,
    board_id: Option<BoardId>,
    name: &str,
    wake: u32,
    deadline: Timestamp,
    at: Timestamp,
) -> NewActivity {
    NewActivity {
        event_type: EventType::WakeupSent,
        message: format!(
            "Agent {name} did not check in and was woken again (wake {wake} of {MAX_WAKES}); \
             it has until {} to heartbeat.",
            deadline.to_rfc3339()
        ),
        agent_id: Some(agent_id),
        board_id,
        data: Some(json!({
            "wake": wake,
            "max_wakes": MAX_WAKES,
            "checkin_deadline": deadline.to_rfc3339(),
        })),
        created_at: at,
    }
}

/// `text` ending with exactly one period (an error quoted at its end may bring its own).
fn sentence(text: String) -> String {
    format!("{}.", text.trim_end().trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    fn subject(name: Option<&str>) -> JobSubject<'_> {
        JobSubject {
            agent_id: AgentId::new(),
            board_id: Some(BoardId::new()),
            name,
        }
    }

    fn progress(step: JobStep<'_>) -> JobProgress<'_> {
        JobProgress {
            job: 42,
            action: JobInProgress::Update,
            attempt: 2,
            step,
        }
    }

    #[test]
    fn every_event_type_reads_back_from_its_wire_name_and_no_two_share_one() {
        for event_type in EventType::ALL {
            assert_eq!(EventType::from_wire(event_type.as_str()), Some(event_type));
        }
        let mut names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventType::ALL.len());
        assert_eq!(EventType::from_wire("agent.provision.exploded"), None);
    }

    #[test]
    fn provisioning_events_carry_the_job_its_action_and_attempt() {
        let who = subject(Some("Worker 1"));
        let queued = JobProgress {
            attempt: 0,
            ..progress(JobStep::Queued)
        }
        .event(who, AT);
        assert_eq!(queued.event_type, EventType::ProvisionQueued);
        assert_eq!(
            queued.data,
            Some(json!({"job": 42, "action": "update", "attempt": 0}))
        );
        assert_eq!(
            queued.message,
            "Agent Worker 1 is queued to be updated on its gateway (job 42)."
        );
        assert_eq!(
            (queued.agent_id, queued.board_id, queued.created_at),
            (Some(who.agent_id), who.board_id, AT)
        );

        let retrying = progress(JobStep::Retrying {
            error: "update failed, retrying: connection refused at ws://127.0.0.1:1",
            next_attempt_at: AT.plus_seconds(5),
        })
        .event(who, AT);
        assert_eq!(retrying.event_type, EventType::ProvisionRetrying);
        assert_eq!(
            retrying.data,
            Some(json!({
                "job": 42, "action": "update", "attempt": 2,
                "error": "update failed, retrying: connection refused at ws://127.0.0.1:1",
                "next_attempt_at": AT.plus_seconds(5).to_rfc3339(),
            }))
        );
        assert!(
            retrying
                .message
                .ends_with("connection refused at ws://127.0.0.1:1."),
            "{}",
            retrying.message
        );

        let failed = progress(JobStep::Failed {
            error: "update failed: token rejected by the gateway.",
        })
        .event(who, AT);
        assert_eq!(failed.event_type, EventType::ProvisionFailed);
        assert_eq!(
            failed.data.as_ref().and_then(|d| d.get("error")),
            Some(&json!("update failed: token rejected by the gateway."))
        );
        assert!(failed.message.ends_with("gateway."), "{}", failed.message);
        assert!(!failed.message.ends_with(".."), "{}", failed.message);
    }

    #[test]
    fn a_done_event_tells_where_the_agent_is_and_any_warning() {
        let placement = JobPlacement {
            gateway_agent_id: "mc-1",
            workspace_path: "/ws/workspace-mc-1",
            session_key: "agent:mc-1:main",
        };
        let done = JobProgress {
            action: JobInProgress::Create,
            attempt: 1,
            ..progress(JobStep::Done {
                warning: None,
                placement: Some(placement),
            })
        }
        .event(subject(Some("Worker 1")), AT);
        assert_eq!(done.event_type, EventType::ProvisionDone);
        assert_eq!(
            done.data,
            Some(json!({
                "job": 42, "action": "create", "attempt": 1,
                "placement": {
                    "gateway_agent_id": "mc-1",
                    "workspace_path": "/ws/workspace-mc-1",
                    "openclaw_session_id": "agent:mc-1:main",
                },
            }))
        );
        assert_eq!(
            done.message,
            "Agent Worker 1 was created on its gateway (job 42, attempt 1)."
        );

        let warned = progress(JobStep::Done {
            warning: Some("the agent did not start"),
            placement: None,
        })
        .event(subject(Some("Worker 1")), AT);
        assert_eq!(
            warned.data.as_ref().and_then(|d| d.get("error")),
            Some(&json!("the agent did not start"))
        );
        assert!(warned.message.ends_with("the agent did not start."));
    }

    #[test]
    fn an_event_about_an_agent_gone_from_the_store_names_it_by_id() {
        let gone = subject(None);
        let done = JobProgress {
            action: JobInProgress::Delete,
            attempt: 1,
            ..progress(JobStep::Done {
                warning: None,
                placement: None,
            })
        }
        .event(gone, AT);
        assert_eq!(
            done.message,
            format!(
                "Agent {} was removed from its gateway (job 42, attempt 1).",
                gone.agent_id
            )
        );
    }

    #[test]
    fn a_recorded_progress_event_names_its_job_and_other_events_none() {
        let recorded = |new: NewActivity| ActivityEvent {
            id: 1,
            event_type: new.event_type.as_str().to_owned(),
            message: new.message,
            agent_id: new.agent_id,
            board_id: new.board_id,
            data: new.data,
            created_at: new.created_at,
        };
        let queued = recorded(progress(JobStep::Queued).event(subject(Some("a")), AT));
        assert_eq!(queued.provision_job(), Some((42, JobInProgress::Update)));
        let (event_type, message) =
            status_transition("a", AgentStatus::Healthy, AgentStatus::Offline, Some(1));
        let transition = recorded(NewActivity {
            event_type,
            message,
            agent_id: None,
            board_id: None,
            data: Some(json!({"from": "healthy", "to": "offline"})),
            created_at: AT,
        });
        assert_eq!(transition.provision_job(), None);
    }

    #[test]
    fn a_wake_event_counts_the_wakes_and_gives_the_new_deadline() {
        let event = wakeup_sent(AgentId::new(), None, "Worker 1", 2, AT.plus_seconds(30), AT);
        assert_eq!(event.event_type, EventType::WakeupSent);
        assert_eq!(
            event.data,
            Some(json!({
                "wake": 2,
                "max_wakes": MAX_WAKES,
                "checkin_deadline": AT.plus_seconds(30).to_rfc3339(),
            }))
        );
        assert!(event.message.starts_with("Agent Worker 1 did not check in"));
        assert!(event.message.ends_with('.'));
    }
}
