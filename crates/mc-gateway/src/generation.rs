//! Every difference between gateway generations that provisioning must know, in one place.
//!
//! A [`GatewayGeneration`] is chosen from the protocol the gateway picks at handshake:
//! protocol 3 gateways (OpenClaw up to about 2026.5.17, e.g. 2026.4.2) and protocol 4
//! gateways (2026.5.18 and later, e.g. 2026.9.6) differ in their config schema, in which
//! workspace files they accept, in whether `config.patch` needs a `baseHash` or restarts the
//! gateway, and in whether an agent's main session can be deleted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The workspace files every generation accepts through `agents.files.*`.
const COMMON_FILES: [&str; 6] = [
    "AGENTS.md",
    "SOUL.md",
    "IDENTITY.md",
    "USER.md",
    "BOOTSTRAP.md",
    "MEMORY.md",
];

/// Which family of gateway we talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayGeneration {
    /// Protocol 3: `agents.list[]`, `channels.defaults.heartbeat`, TOOLS/HEARTBEAT files,
    /// restart after every `config.patch`.
    V3,
    /// Protocol 4: `agents.entries{}`, `heartbeatVisibility`, mandatory `baseHash`, no
    /// TOOLS.md or HEARTBEAT.md, main sessions cannot be deleted, hot reload.
    V4,
}

/// Heartbeat settings pushed into an agent's gateway config entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatSettings {
    /// Interval in the gateway's duration syntax, e.g. `10m`.
    pub every: String,
    /// Where heartbeat replies go, e.g. `last`.
    pub target: String,
}

/// One agent's desired placement in the gateway config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfigEntry {
    /// The gateway agent id.
    pub id: String,
    /// Its absolute workspace path.
    pub workspace: String,
    /// Its display name, when the config should set it (instead of an `agents.update`).
    pub name: Option<String>,
    /// Its heartbeat settings.
    pub heartbeat: HeartbeatSettings,
}

/// Why a config patch could not be built from the current config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigShapeError {
    /// The current config has the agents collection in an unexpected shape.
    #[error("gateway config {path} is not {expected}")]
    Unexpected {
        /// The config path, e.g. `agents.list`.
        path: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
}

impl GatewayGeneration {
    /// The generation speaking `protocol`, if we support it.
    pub fn from_protocol(protocol: u32) -> Option<Self> {
        match protocol {
            3 => Some(Self::V3),
            4 => Some(Self::V4),
            _ => None,
        }
    }

    /// The protocol number.
    pub fn protocol(self) -> u32 {
        match self {
            Self::V3 => 3,
            Self::V4 => 4,
        }
    }

    /// The workspace file names `agents.files.get`/`set` accept.
    pub fn workspace_files(self) -> Vec<&'static str> {
        let mut files = COMMON_FILES.to_vec();
        if self == Self::V3 {
            files.extend(["TOOLS.md", "HEARTBEAT.md"]);
        }
        files
    }

    /// Whether `agents.files.*` accepts `name`.
    pub fn accepts_workspace_file(self, name: &str) -> bool {
        self.workspace_files().contains(&name)
    }

    /// Whether `config.patch` must carry the `baseHash` from `config.get`.
    pub fn requires_base_hash(self) -> bool {
        self == Self::V4
    }

    /// Whether a successful `config.patch` restarts the gateway (about 2 s later), dropping
    /// every connection.
    pub fn restarts_after_config_patch(self) -> bool {
        self == Self::V3
    }

    /// How long the config writer keeps a batch open for more agents' entries after the
    /// first one. Longer on protocol 3, where every patch costs a restart of the gateway.
    pub fn config_batch_window(self) -> std::time::Duration {
        match self {
            Self::V3 => std::time::Duration::from_millis(1500),
            Self::V4 => std::time::Duration::from_millis(150),
        }
    }

    /// How many config writes (`config.patch`) the gateway accepts from one device per
    /// minute before it answers "rate limit exceeded": 3 on 2026.4.2, 30 on 2026.9.6.
    pub fn config_writes_per_minute(self) -> u32 {
        match self {
            Self::V3 => 3,
            Self::V4 => 30,
        }
    }

    /// How many provisioning jobs may run against one gateway at once. Enough to keep the
    /// gateway (one Node process) busy and the config batches full, few enough that a slow
    /// gateway is not buried in requests that then time out.
    pub fn provisioning_concurrency(self) -> usize {
        match self {
            Self::V3 => 8,
            Self::V4 => 8,
        }
    }

    /// Whether `sessions.delete` refuses `agent:<id>:main` keys; callers treat that refusal
    /// as success because deleting the agent removes its sessions anyway.
    pub fn refuses_main_session_delete(self) -> bool {
        self == Self::V4
    }

    /// The key under `channels.defaults` for heartbeat visibility.
    pub fn heartbeat_visibility_key(self) -> &'static str {
        match self {
            Self::V3 => "heartbeat",
            Self::V4 => "heartbeatVisibility",
        }
    }

    /// The ids of the agents present in a config (`config.get`'s `config`).
    pub fn configured_agent_ids(self, config: &Value) -> Vec<String> {
        match self {
            Self::V3 => config
                .pointer("/agents/list")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|e| e.get("id")?.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            Self::V4 => config
                .pointer("/agents/entries")
                .and_then(Value::as_object)
                .map(|entries| entries.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The partial config to send as `config.patch` `raw` so that `agents` have their
    /// workspace and heartbeat, heartbeat visibility defaults are set and exec runs on the
    /// gateway; `None` when the current config already says all that.
    ///
    /// Protocol 3 replaces arrays wholesale, so the full `agents.list` is sent with other
    /// entries kept as they are; protocol 4 merges `agents.entries` by id.
    pub fn agent_config_patch(
        self,
        current: &Value,
        agents: &[AgentConfigEntry],
    ) -> Result<Option<Value>, ConfigShapeError> {
        let mut patch = Map::new();
        match self {
            Self::V3 => {
                let list = match current.pointer("/agents/list") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(list)) => list.clone(),
                    Some(_) => {
                        return Err(ConfigShapeError::Unexpected {
                            path: "agents.list",
                            expected: "a list",
                        });
                    }
                };
                let mut new_list = list.clone();
                for agent in agents {
                    let wanted =
                        json!({"every": agent.heartbeat.every, "target": agent.heartbeat.target});
                    match new_list
                        .iter_mut()
                        .find(|e| e.get("id").and_then(Value::as_str) == Some(&agent.id))
                    {
                        Some(entry) => {
                            entry["workspace"] = json!(agent.workspace);
                            if let Some(name) = &agent.name {
                                entry["name"] = json!(name);
                            }
                            merge_missing_or_set(entry, "heartbeat", &wanted);
                        }
                        None => {
                            let mut entry = json!({
                                "id": agent.id, "workspace": agent.workspace, "heartbeat": wanted,
                            });
                            if let Some(name) = &agent.name {
                                entry["name"] = json!(name);
                            }
                            new_list.push(entry);
                        }
                    }
                }
                if new_list != list {
                    patch.insert("agents".into(), json!({ "list": new_list }));
                }
            }
            Self::V4 => {
                let entries = match current.pointer("/agents/entries") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(entries)) => entries.clone(),
                    Some(_) => {
                        return Err(ConfigShapeError::Unexpected {
                            path: "agents.entries",
                            expected: "an object keyed by agent id",
                        });
                    }
                };
                let mut changed = Map::new();
                for agent in agents {
                    let mut wanted = json!({
                        "workspace": agent.workspace,
                        "heartbeat": {"every": agent.heartbeat.every, "target": agent.heartbeat.target},
                    });
                    if let Some(name) = &agent.name {
                        wanted["name"] = json!(name);
                    }
                    let current_entry = entries.get(&agent.id);
                    let up_to_date = current_entry.is_some_and(|e| {
                        e.get("workspace") == wanted.get("workspace")
                            && (agent.name.is_none() || e.get("name") == wanted.get("name"))
                            && e.pointer("/heartbeat/every") == wanted.pointer("/heartbeat/every")
                            && e.pointer("/heartbeat/target") == wanted.pointer("/heartbeat/target")
                    });
                    if !up_to_date {
                        changed.insert(agent.id.clone(), wanted);
                    }
                }
                if !changed.is_empty() {
                    patch.insert("agents".into(), json!({ "entries": changed }));
                }
            }
        }
        let visibility_key = self.heartbeat_visibility_key();
        let visibility_defaults =
            json!({"showOk": false, "showAlerts": true, "useIndicator": true});
        let current_visibility = current
            .pointer(&format!("/channels/defaults/{visibility_key}"))
            .and_then(Value::as_object);
        let mut visibility = current_visibility.cloned().unwrap_or_default();
        let mut visibility_changed = current_visibility.is_none();
        for (key, value) in visibility_defaults.as_object().expect("literal object") {
            if !visibility.contains_key(key) {
                visibility.insert(key.clone(), value.clone());
                visibility_changed = true;
            }
        }
        if visibility_changed {
            patch.insert(
                "channels".into(),
                json!({"defaults": {visibility_key: visibility}}),
            );
        }
        if current.pointer("/tools/exec/host").is_none() {
            patch.insert("tools".into(), json!({"exec": {"host": "gateway"}}));
        }
        Ok((!patch.is_empty()).then_some(Value::Object(patch)))
    }
}

/// Sets `entry[key]` to `wanted`'s fields, keeping other fields already there.
fn merge_missing_or_set(entry: &mut Value, key: &str, wanted: &Value) {
    let slot = &mut entry[key];
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    let slot = slot.as_object_mut().expect("made an object above");
    for (k, v) in wanted.as_object().expect("wanted is an object") {
        slot.insert(k.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> AgentConfigEntry {
        AgentConfigEntry {
            id: id.to_owned(),
            workspace: format!("/ws/workspace-{id}"),
            name: None,
            heartbeat: HeartbeatSettings {
                every: "10m".into(),
                target: "last".into(),
            },
        }
    }

    #[test]
    fn generation_follows_the_negotiated_protocol() {
        assert_eq!(
            GatewayGeneration::from_protocol(3),
            Some(GatewayGeneration::V3)
        );
        assert_eq!(
            GatewayGeneration::from_protocol(4),
            Some(GatewayGeneration::V4)
        );
        assert_eq!(GatewayGeneration::from_protocol(5), None);
    }

    #[test]
    fn v4_refuses_tools_and_heartbeat_files_and_v3_accepts_them() {
        for file in ["TOOLS.md", "HEARTBEAT.md"] {
            assert!(GatewayGeneration::V3.accepts_workspace_file(file));
            assert!(!GatewayGeneration::V4.accepts_workspace_file(file));
        }
        for file in COMMON_FILES {
            assert!(GatewayGeneration::V4.accepts_workspace_file(file));
        }
        assert!(!GatewayGeneration::V3.accepts_workspace_file("ROUTING.md"));
    }

    #[test]
    fn v3_patch_sends_the_full_agents_list_keeping_other_entries() {
        let current = json!({"agents": {"list": [{"id": "other", "workspace": "/x"}]}});
        let patch = GatewayGeneration::V3
            .agent_config_patch(&current, &[worker("mc-1")])
            .unwrap()
            .unwrap();
        assert_eq!(
            patch["agents"]["list"],
            json!([
                {"id": "other", "workspace": "/x"},
                {"id": "mc-1", "workspace": "/ws/workspace-mc-1", "heartbeat": {"every": "10m", "target": "last"}}
            ])
        );
        assert_eq!(
            patch["channels"]["defaults"]["heartbeat"],
            json!({"showOk": false, "showAlerts": true, "useIndicator": true})
        );
        assert_eq!(patch["tools"]["exec"]["host"], "gateway");
    }

    #[test]
    fn v4_patch_uses_entries_and_heartbeat_visibility() {
        let patch = GatewayGeneration::V4
            .agent_config_patch(&json!({}), &[worker("mc-1")])
            .unwrap()
            .unwrap();
        assert_eq!(
            patch["agents"],
            json!({"entries": {"mc-1": {"workspace": "/ws/workspace-mc-1", "heartbeat": {"every": "10m", "target": "last"}}}})
        );
        assert!(patch["channels"]["defaults"].get("heartbeat").is_none());
        assert!(patch["channels"]["defaults"]["heartbeatVisibility"].is_object());
    }

    #[test]
    fn no_patch_when_config_already_matches() {
        for generation in [GatewayGeneration::V3, GatewayGeneration::V4] {
            let first = generation
                .agent_config_patch(&json!({}), &[worker("mc-1")])
                .unwrap()
                .unwrap();
            assert_eq!(generation.configured_agent_ids(&first), vec!["mc-1"]);
            assert_eq!(
                generation
                    .agent_config_patch(&first, &[worker("mc-1")])
                    .unwrap(),
                None,
                "{generation:?}"
            );
        }
    }

    #[test]
    fn a_display_name_in_an_entry_is_written_and_compared_on_both_generations() {
        for generation in [GatewayGeneration::V3, GatewayGeneration::V4] {
            let named = AgentConfigEntry {
                name: Some("Ada".into()),
                ..worker("mc-1")
            };
            let first = generation
                .agent_config_patch(&json!({}), std::slice::from_ref(&named))
                .unwrap()
                .unwrap();
            let written = match generation {
                GatewayGeneration::V3 => first["agents"]["list"][0]["name"].clone(),
                GatewayGeneration::V4 => first["agents"]["entries"]["mc-1"]["name"].clone(),
            };
            assert_eq!(written, "Ada", "{generation:?}");
            assert_eq!(
                generation
                    .agent_config_patch(&first, std::slice::from_ref(&named))
                    .unwrap(),
                None
            );
            let renamed = AgentConfigEntry {
                name: Some("Grace".into()),
                ..worker("mc-1")
            };
            assert!(
                generation
                    .agent_config_patch(&first, &[renamed])
                    .unwrap()
                    .is_some(),
                "{generation:?}: a new name is a change"
            );
        }
    }

    #[test]
    fn v3_patch_rejects_an_agents_list_that_is_not_a_list() {
        let err = GatewayGeneration::V3
            .agent_config_patch(&json!({"agents": {"list": {}}}), &[worker("a")])
            .unwrap_err();
        assert_eq!(err.to_string(), "gateway config agents.list is not a list");
    }
}
