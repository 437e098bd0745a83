//! Typed calls for what provisioning needs. Request structs serialise to exactly the params
//! the gateway's schema allows (it rejects unknown keys); response structs read the fields
//! we use and ignore the rest, so additive changes between generations do not break them.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::connection::GatewayHandle;
use crate::error::GatewayError;
use crate::generation::{AgentConfigEntry, GatewayGeneration};

/// How long a gateway may take to see an agent it has just created. `agents.create` writes
/// the config file and the gateway refreshes its runtime config asynchronously, so a call
/// naming the new agent can briefly answer "agent not found" (seen on 2026.9.6).
pub const NEW_AGENT_SETTLE: Duration = Duration::from_secs(20);

/// How often [`until_agent_visible`] asks again.
const NEW_AGENT_POLL: Duration = Duration::from_millis(250);

/// Runs `call` (a call naming an agent created moments ago) again while the gateway answers
/// that the agent does not exist, for up to [`NEW_AGENT_SETTLE`]; any other outcome returns.
pub async fn until_agent_visible<T, F, Fut>(mut call: F) -> Result<T, GatewayError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Err(error) if error.is_missing_agent() && started.elapsed() < NEW_AGENT_SETTLE => {
                tokio::time::sleep(NEW_AGENT_POLL).await;
            }
            outcome => return outcome,
        }
    }
}

/// `health` result (only the fields we read).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The gateway's own verdict.
    #[serde(default)]
    pub ok: bool,
    /// The default agent id, if any.
    #[serde(default)]
    pub default_agent_id: Option<String>,
    /// The whole payload.
    #[serde(skip)]
    pub raw: Value,
}

/// What one `config.get` says must change for a set of agents' entries.
#[derive(Debug)]
pub(crate) struct AgentConfigPlan {
    /// The generation the patch is written for.
    pub generation: GatewayGeneration,
    /// The patch to send; `None` when nothing differs.
    pub patch: Option<Value>,
    /// The hash of the config read, to send as `baseHash`.
    pub base_hash: Option<String>,
}

/// `config.get` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConfigSnapshot {
    /// Opaque hash to pass back as `baseHash`.
    #[serde(default)]
    pub hash: Option<String>,
    /// The effective config (secrets redacted).
    #[serde(default)]
    pub config: Value,
    /// Whether a config file exists.
    #[serde(default)]
    pub exists: Option<bool>,
}

/// `config.patch` params.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigPatch {
    /// JSON text of the partial config (merge-patch; arrays replaced wholesale).
    pub raw: String,
    /// The hash from `config.get`; required by protocol 4 when a config exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_hash: Option<String>,
}

/// `config.patch` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConfigPatched {
    /// Whether the patch was applied.
    #[serde(default)]
    pub ok: bool,
    /// Restart scheduled by the gateway (protocol 3), if any.
    #[serde(default)]
    pub restart: Option<Value>,
}

/// `agents.create` params.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateAgent {
    /// The agent's name; the gateway derives the id by slugifying it.
    pub name: String,
    /// Absolute workspace path.
    pub workspace: String,
}

/// `agents.create` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCreated {
    /// The id the gateway assigned.
    pub agent_id: String,
    /// The workspace it uses.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// `agents.update` params.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateAgent {
    /// The gateway agent id.
    pub agent_id: String,
    /// New display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New workspace path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// `agents.delete` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDeleted {
    /// The deleted agent.
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// One entry of `agents.files.list`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceFileEntry {
    /// File name, e.g. `SOUL.md`.
    pub name: String,
    /// Absolute path on the gateway host.
    #[serde(default)]
    pub path: Option<String>,
    /// True when the file does not exist yet.
    #[serde(default)]
    pub missing: bool,
    /// Size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Content, for `get` and `set` results.
    #[serde(default)]
    pub content: Option<String>,
}

/// `agents.files.list` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkspaceFiles {
    /// The agent's workspace directory.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Files the gateway knows about.
    #[serde(default)]
    pub files: Vec<WorkspaceFileEntry>,
}

/// `agents.files.get` / `set` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkspaceFile {
    /// The file.
    pub file: WorkspaceFileEntry,
}

/// What `sessions.delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionDeletion {
    /// The session was deleted.
    Deleted,
    /// The gateway had nothing to delete (or archived it without deleting).
    NothingDeleted,
    /// The gateway refuses to delete main sessions (protocol 4); deleting the agent removes
    /// it anyway, so this counts as done.
    MainSessionKept,
}

/// `chat.send` params.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatSend {
    /// `agent:<id>:main` style key.
    pub session_key: String,
    /// The message text.
    pub message: String,
    /// Whether the reply is delivered to the session's channel.
    pub deliver: bool,
    /// Deduplicates retries of the same message.
    pub idempotency_key: String,
}

/// `chat.send` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatStarted {
    /// The run id.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Usually `started`.
    #[serde(default)]
    pub status: Option<String>,
}

fn decode<T: DeserializeOwned>(method: &str, payload: Value) -> Result<T, GatewayError> {
    serde_json::from_value(payload).map_err(|e| GatewayError::Rejected {
        method: method.to_owned(),
        code: "UNEXPECTED_RESPONSE".to_owned(),
        message: format!("unexpected response shape: {e}"),
    })
}

impl GatewayHandle {
    async fn call<P: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<T, GatewayError> {
        let params = serde_json::to_value(params).expect("params serialise");
        decode(method, self.request(method, params).await?)
    }

    /// `health`: succeeds when the gateway is up and answering.
    pub async fn health(&self) -> Result<Health, GatewayError> {
        let raw = self.request("health", serde_json::json!({})).await?;
        let mut health: Health = decode("health", raw.clone())?;
        health.raw = raw;
        Ok(health)
    }

    /// `config.get`: the current config and its hash.
    pub async fn config_get(&self) -> Result<ConfigSnapshot, GatewayError> {
        let mut snapshot: ConfigSnapshot = self.call("config.get", &serde_json::json!({})).await?;
        if snapshot.config.is_null() {
            snapshot.config = Value::Object(Default::default());
        }
        Ok(snapshot)
    }

    /// `config.patch` with a partial config and the `baseHash` it was computed from.
    pub async fn config_patch(
        &self,
        partial: &Value,
        base_hash: Option<&str>,
    ) -> Result<ConfigPatched, GatewayError> {
        self.serialize_config_write(self.config_patch_in_turn(partial, base_hash))
            .await
    }

    /// `config.patch` for a caller that already holds the config-write turn
    /// ([`GatewayHandle::serialize_config_write`]).
    pub(crate) async fn config_patch_in_turn(
        &self,
        partial: &Value,
        base_hash: Option<&str>,
    ) -> Result<ConfigPatched, GatewayError> {
        let params = ConfigPatch {
            raw: partial.to_string(),
            base_hash: base_hash.map(str::to_owned),
        };
        self.call("config.patch", &params).await
    }

    /// Makes sure `agents` have their workspace and heartbeat in the gateway config, in the
    /// schema of the connected generation: `config.get`, then `config.patch` with `baseHash`
    /// when something differs. Re-reads and retries once when the config changed meanwhile.
    /// Returns whether a patch was sent. Safe to retry after a transient failure (a v3
    /// gateway may restart before its answer arrives): the retry finds nothing to change.
    pub async fn apply_agent_config(
        &self,
        agents: &[AgentConfigEntry],
    ) -> Result<bool, GatewayError> {
        let mut retried = false;
        loop {
            let plan = self.plan_agent_config(agents).await?;
            let Some(patch) = plan.patch else {
                return Ok(false);
            };
            match self.config_patch(&patch, plan.base_hash.as_deref()).await {
                Ok(_) => return Ok(true),
                Err(error) if error.is_stale_config() && !retried => retried = true,
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads the config once and computes the patch that gives `agents` their entries in
    /// the connected generation's schema.
    pub(crate) async fn plan_agent_config(
        &self,
        agents: &[AgentConfigEntry],
    ) -> Result<AgentConfigPlan, GatewayError> {
        let snapshot = self.config_get().await?;
        let generation = self.generation_or_error()?;
        let patch = generation
            .agent_config_patch(&snapshot.config, agents)
            .map_err(|e| GatewayError::Rejected {
                method: "config.get".to_owned(),
                code: "UNEXPECTED_CONFIG".to_owned(),
                message: e.to_string(),
            })?;
        Ok(AgentConfigPlan {
            generation,
            patch,
            base_hash: snapshot.hash,
        })
    }

    fn generation_or_error(&self) -> Result<GatewayGeneration, GatewayError> {
        self.generation().ok_or_else(|| GatewayError::Transient {
            message: format!("{}: no handshake completed yet", self.url()),
        })
    }

    /// `agents.create` (one config write at a time, like every call that rewrites the
    /// config: [`GatewayHandle::serialize_config_write`]).
    pub async fn agents_create(&self, params: &CreateAgent) -> Result<AgentCreated, GatewayError> {
        self.serialize_config_write(self.call("agents.create", params))
            .await
    }

    /// `agents.update`.
    pub async fn agents_update(&self, params: &UpdateAgent) -> Result<(), GatewayError> {
        self.serialize_config_write(self.call::<_, Value>("agents.update", params))
            .await
            .map(drop)
    }

    /// `agents.delete`, removing the agent's files too.
    pub async fn agents_delete(&self, agent_id: &str) -> Result<AgentDeleted, GatewayError> {
        let params = serde_json::json!({"agentId": agent_id, "deleteFiles": true});
        self.serialize_config_write(self.call("agents.delete", &params))
            .await
    }

    /// `agents.files.list`.
    pub async fn agents_files_list(&self, agent_id: &str) -> Result<WorkspaceFiles, GatewayError> {
        self.call(
            "agents.files.list",
            &serde_json::json!({"agentId": agent_id}),
        )
        .await
    }

    /// `agents.files.get`.
    pub async fn agents_files_get(
        &self,
        agent_id: &str,
        name: &str,
    ) -> Result<WorkspaceFile, GatewayError> {
        self.call(
            "agents.files.get",
            &serde_json::json!({"agentId": agent_id, "name": name}),
        )
        .await
    }

    /// `agents.files.set`. Protocol 4 gateways refuse TOOLS.md and HEARTBEAT.md
    /// ([`GatewayGeneration::accepts_workspace_file`]); that answer is
    /// [`GatewayError::Unsupported`].
    pub async fn agents_files_set(
        &self,
        agent_id: &str,
        name: &str,
        content: &str,
    ) -> Result<WorkspaceFile, GatewayError> {
        self.call(
            "agents.files.set",
            &serde_json::json!({"agentId": agent_id, "name": name, "content": content}),
        )
        .await
    }

    /// `sessions.patch`: creates the session if missing and sets its label.
    pub async fn sessions_patch(
        &self,
        key: &str,
        label: Option<&str>,
    ) -> Result<Value, GatewayError> {
        let mut params = serde_json::json!({"key": key});
        if let Some(label) = label.filter(|l| !l.is_empty()) {
            params["label"] = label.into();
        }
        self.request("sessions.patch", params).await
    }

    /// `sessions.reset`: starts the session afresh (creates it when unknown).
    pub async fn sessions_reset(&self, key: &str) -> Result<Value, GatewayError> {
        self.request("sessions.reset", serde_json::json!({"key": key}))
            .await
    }

    /// `sessions.delete`; a refusal to delete a main session counts as done.
    pub async fn sessions_delete(&self, key: &str) -> Result<SessionDeletion, GatewayError> {
        match self
            .request("sessions.delete", serde_json::json!({"key": key}))
            .await
        {
            Ok(payload) => Ok(
                if payload.get("deleted").and_then(Value::as_bool) == Some(false) {
                    SessionDeletion::NothingDeleted
                } else {
                    SessionDeletion::Deleted
                },
            ),
            Err(error) if error.is_main_session_delete_refused() => {
                Ok(SessionDeletion::MainSessionKept)
            }
            Err(error) => Err(error),
        }
    }

    /// `chat.send`: posts a message into a session (the run proceeds asynchronously).
    pub async fn chat_send(&self, params: &ChatSend) -> Result<ChatStarted, GatewayError> {
        self.call("chat.send", params).await
    }
}
