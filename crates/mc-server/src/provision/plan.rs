//! What a provisioning job does on a gateway, and every per-generation choice it makes.
//!
//! Create and update: upsert the agent (`agents.create`; when it already exists,
//! `agents.update` with its display name and workspace; a fresh one gets its display name
//! with the config write) and list its files ([`place`]); then, with the token the runner
//! chose (reading the credentials file back when it holds no fresh one), [`finish`]: write
//! the workspace files (`agents.files.set`; on update USER.md and MEMORY.md are kept when
//! present), wake its main session (`sessions.patch` + `chat.send`), and last push its
//! workspace and heartbeat through `config.patch` in the gateway's schema (last, because a
//! protocol 3 gateway restarts after it). That push goes through the gateway's config
//! writer, which folds the entries of every job running at the time into one patch.
//! Delete: `agents.delete` then `sessions.delete` (an unknown agent or session, and the v4
//! refusal to delete a main session, count as done).
//! Every step is idempotent, so a retried job starts over from the first step.

use mc_domain::agent::Agent;
use mc_domain::gateway::Gateway;
use mc_gateway::rpc::{
    ChatSend, CreateAgent, UpdateAgent, WorkspaceFileEntry, until_agent_visible,
};
use mc_gateway::{
    AgentConfigEntry, GatewayError, GatewayGeneration, GatewayHandle, HeartbeatSettings,
};
use mc_store::AgentPlacement;

use super::templates::{FileContext, RenderError, Templates, WorkspaceFile};

/// Workspace files an update leaves alone when they already exist (the agent's own notes).
pub const PRESERVED_ON_UPDATE: [&str; 2] = ["USER.md", "MEMORY.md"];

/// The file holding the agent's credentials (`BASE_URL`, `AUTH_TOKEN`, `AGENT_ID`,
/// `AGENT_NAME`, `BOARD_ID` as ``- `KEY=value` `` lines) on a gateway of `generation`.
///
/// TOOLS.md where the gateway accepts it (protocol 3, the seed's contract). Protocol 4
/// gateways refuse TOOLS.md, so the same lines go into a delimited "Credentials" section
/// of AGENTS.md: the one file every generation accepts, that the agent reads first on
/// every run, that Mission Control rewrites on every update (so a rotated token lands) and
/// that no per-agent override replaces.
pub fn credentials_file(generation: GatewayGeneration) -> &'static str {
    if generation.accepts_workspace_file("TOOLS.md") {
        "TOOLS.md"
    } else {
        "AGENTS.md"
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The gateway failed or refused.
    #[error("{0}")]
    Gateway(#[from] GatewayError),
    /// A workspace file template did not render.
    #[error("{0}")]
    Render(#[from] RenderError),
    /// The gateway is gone or no longer managed.
    #[error("{0}")]
    GatewayUnavailable(String),
    /// Mission Control's own database failed.
    #[error("{0}")]
    Store(String),
}

impl ProvisionError {
    /// Whether retrying the job unchanged cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Gateway(error) => error.is_permanent(),
            Self::Render(_) | Self::GatewayUnavailable(_) => true,
            Self::Store(_) => false,
        }
    }
}

/// Lowercase, runs of anything but `[a-z0-9]` replaced by `-`, trimmed of `-`.
pub fn slugify(text: &str) -> String {
    let mut slug = String::with_capacity(text.len());
    for c in text.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

/// Where `agent` lives on `gateway`: its gateway agent id (`mc-gateway-<gateway>` for a
/// gateway's main agent, `lead-<board>` for a board lead, `mc-<agent>` for a worker, or the
/// id in a stored session key), its workspace `<workspace_root>/workspace-<key>` and its
/// main session `agent:<id>:main`.
pub fn placement_of(agent: &Agent, gateway: &Gateway) -> AgentPlacement {
    let stored_key = agent
        .openclaw_session_id
        .as_deref()
        .and_then(|s| s.strip_prefix("agent:"))
        .and_then(|rest| rest.split(':').next())
        .filter(|key| !key.is_empty())
        .map(str::to_owned);
    let key = stored_key.unwrap_or_else(|| match (agent.board_id, agent.is_board_lead) {
        (None, _) => format!("mc-gateway-{}", gateway.id.as_uuid()),
        (Some(board), true) => format!("lead-{}", board.as_uuid()),
        (Some(_), false) => format!("mc-{}", agent.id.as_uuid()),
    });
    let directory = slugify(
        key.strip_prefix("mc-")
            .filter(|k| k.starts_with("gateway-"))
            .unwrap_or(&key),
    );
    AgentPlacement {
        workspace_path: format!(
            "{}/workspace-{directory}",
            gateway.workspace_root.trim_end_matches('/')
        ),
        session_key: format!("agent:{key}:main"),
        gateway_agent_id: key,
    }
}

/// The gateway's duration syntax for a number of seconds (`10m`, `90s`, `2h`).
pub fn gateway_duration(seconds: u32) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// The heartbeat settings pushed for `agent`.
pub fn heartbeat_of(agent: &Agent) -> HeartbeatSettings {
    HeartbeatSettings {
        every: gateway_duration(agent.heartbeat_config.interval_seconds),
        target: "last".to_owned(),
    }
}

/// The files to write, in order, given what the gateway already has. Files the gateway's
/// generation refuses are never sent; on update the preserved files are kept when they
/// exist, and BOOTSTRAP.md is not re-sent once the agent has deleted it.
pub fn files_to_write(
    generation: GatewayGeneration,
    rendered: Vec<WorkspaceFile>,
    existing: &[WorkspaceFileEntry],
    is_update: bool,
) -> Vec<WorkspaceFile> {
    let present = |name: &str| existing.iter().any(|f| f.name == name && !f.missing);
    let deleted_by_agent = |name: &str| existing.iter().any(|f| f.name == name && f.missing);
    rendered
        .into_iter()
        .filter(|f| generation.accepts_workspace_file(f.name))
        .filter(|f| !(is_update && PRESERVED_ON_UPDATE.contains(&f.name) && present(f.name)))
        .filter(|f| !(is_update && f.name == "BOOTSTRAP.md" && deleted_by_agent(f.name)))
        .collect()
}

/// Whether a `chat.send` failure means the wake reached the agent but its run could not
/// start (2026.9.6 answers `UNAVAILABLE` "Agent failed before reply: No route-compatible
/// authentication source is configured for <provider>" when no model provider is set up,
/// and caches that answer under the idempotency key, so retrying cannot help).
pub fn agent_could_not_start(error: &GatewayError) -> bool {
    error
        .to_string()
        .to_lowercase()
        .contains("agent failed before reply")
}

/// Maps a call's failure for the agent `id`, which the job has just put on the gateway: when
/// the gateway still does not know it after [`mc_gateway::rpc::NEW_AGENT_SETTLE`], its
/// runtime config lags behind its config file (2026.9.6 under load lists a new agent only at
/// its next reload) or lost the entry (a config write it was still finishing, or a reload
/// of an older file, landed over it). That is worth another attempt, which creates the agent
/// again if need be, rather than failing for good.
pub fn vanished(id: &str) -> impl Fn(GatewayError) -> GatewayError + '_ {
    move |error| {
        if error.is_missing_agent() {
            GatewayError::Transient {
                message: format!(
                    "{error}: the gateway does not know agent {id} although it was put there \
                     (its runtime config lags behind or lost it); the next attempt puts it back"
                ),
            }
        } else {
            error
        }
    }
}

/// An agent in place on its gateway, ready for its workspace files.
#[derive(Debug)]
pub struct Placed {
    /// The gateway's generation, from its handshake.
    pub generation: GatewayGeneration,
    /// The workspace files the gateway already has for the agent.
    existing: Vec<WorkspaceFileEntry>,
}

/// Puts `agent` on the gateway: `agents.create`, or `agents.update` when it is already
/// there, then reads which workspace files it has. Its files are written by [`finish`],
/// once the caller knows which token they carry.
pub async fn place(
    handle: &GatewayHandle,
    agent: &Agent,
    placement: &AgentPlacement,
) -> Result<Placed, ProvisionError> {
    handle.health().await?;
    let generation = handle.generation().ok_or_else(|| GatewayError::Transient {
        message: format!("{}: no handshake completed yet", handle.url()),
    })?;
    let id = &placement.gateway_agent_id;
    let created = match handle
        .agents_create(&CreateAgent {
            name: id.clone(),
            workspace: placement.workspace_path.clone(),
        })
        .await
    {
        Ok(_) => true,
        Err(error) if error.is_already_exists() => false,
        Err(error) => return Err(error.into()),
    };
    // A fresh agent already has its workspace; its display name rides on the batched
    // config write, saving a config rewrite (and reload) per agent. An agent that was
    // already there may have another workspace: `agents.update` moves it.
    if !created {
        let update = UpdateAgent {
            agent_id: id.clone(),
            name: Some(agent.name.to_string()),
            workspace: Some(placement.workspace_path.clone()),
        };
        until_agent_visible(|| handle.agents_update(&update))
            .await
            .map_err(vanished(id))?;
    }
    let existing = until_agent_visible(|| handle.agents_files_list(id))
        .await
        .map_err(vanished(id))?
        .files;
    Ok(Placed {
        generation,
        existing,
    })
}

/// Writes the workspace files of an agent [`place`]d on the gateway, wakes it and pushes
/// its heartbeat config. `slot` (the job's share of the gateway) is given back before the
/// config write, which waits for its batch. Returns a warning when the agent is in place
/// but could not start when woken.
#[expect(
    clippy::too_many_arguments,
    reason = "each argument is one input of the job; bundling them would only rename them"
)]
pub async fn finish(
    handle: &GatewayHandle,
    templates: &Templates,
    agent: &Agent,
    placement: &AgentPlacement,
    placed: Placed,
    context: &FileContext,
    is_update: bool,
    wake_key: &str,
    slot: super::slots::SlotPermit,
) -> Result<Option<String>, ProvisionError> {
    let id = &placement.gateway_agent_id;
    let generation = placed.generation;
    let rendered = templates.render_files(agent, generation, context)?;
    for file in files_to_write(generation, rendered, &placed.existing, is_update) {
        // The first write can still meet the lag before a fresh agent is visible.
        until_agent_visible(|| handle.agents_files_set(id, file.name, &file.content))
            .await
            .map_err(vanished(id))?;
    }
    let verb = if is_update { "updated" } else { "provisioned" };
    let warning = wake(handle, agent, placement, verb, wake_key).await?;
    // Waiting for the batched config write costs the gateway nothing: let the next job
    // start its calls meanwhile.
    drop(slot);
    handle
        .write_agent_config(AgentConfigEntry {
            id: id.clone(),
            workspace: placement.workspace_path.clone(),
            name: Some(agent.name.to_string()),
            heartbeat: heartbeat_of(agent),
        })
        .await?;
    Ok(warning)
}

/// Wakes the agent's main session (`sessions.patch` + `chat.send` under `wake_key`),
/// telling it that its workspace was `verb` and to start heartbeating. Returns a warning
/// when the wake reached the agent but its run could not start.
pub async fn wake(
    handle: &GatewayHandle,
    agent: &Agent,
    placement: &AgentPlacement,
    verb: &str,
    wake_key: &str,
) -> Result<Option<String>, ProvisionError> {
    handle
        .sessions_patch(&placement.session_key, Some(agent.name.as_str()))
        .await?;
    let woken = handle
        .chat_send(&ChatSend {
            session_key: placement.session_key.clone(),
            message: format!(
                "Hello {}: Mission Control has {verb} your workspace. Read BOOTSTRAP.md first \
                 if it exists, then AGENTS.md, and start sending heartbeats.",
                agent.name
            ),
            deliver: false,
            idempotency_key: wake_key.to_owned(),
        })
        .await;
    match woken {
        Ok(_) => Ok(None),
        Err(error) if agent_could_not_start(&error) => Ok(Some(format!(
            "the agent is on the gateway but could not start when woken: {error}"
        ))),
        Err(error) => Err(error.into()),
    }
}

/// Removes an agent (and its main session) from the gateway.
pub async fn remove(
    handle: &GatewayHandle,
    gateway_agent_id: &str,
    session_key: &str,
) -> Result<(), ProvisionError> {
    match handle.agents_delete(gateway_agent_id).await {
        Ok(_) => {}
        Err(error) if error.is_missing_agent() => {}
        Err(error) => return Err(error.into()),
    }
    match handle.sessions_delete(session_key).await {
        Ok(_) => Ok(()),
        Err(error) if error.is_missing_session() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugify_keeps_ids_and_collapses_other_runs() {
        assert_eq!(slugify("mc-0a1b-2c"), "mc-0a1b-2c");
        assert_eq!(slugify("  Hello, World!! "), "hello-world");
    }

    #[test]
    fn durations_use_the_largest_whole_unit() {
        assert_eq!(gateway_duration(600), "10m");
        assert_eq!(gateway_duration(7200), "2h");
        assert_eq!(gateway_duration(90), "90s");
    }

    #[test]
    fn credentials_go_to_tools_on_v3_and_agents_on_v4() {
        assert_eq!(credentials_file(GatewayGeneration::V3), "TOOLS.md");
        assert_eq!(credentials_file(GatewayGeneration::V4), "AGENTS.md");
        assert!(
            GatewayGeneration::V4.accepts_workspace_file(credentials_file(GatewayGeneration::V4))
        );
    }
}
