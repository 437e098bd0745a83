//! Workspace files, rendered from templates embedded in the binary with `minijinja`
//! (strict undefined: a template naming an unknown variable is an error, never a blank).

use mc_domain::agent::Agent;
use mc_gateway::GatewayGeneration;
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;

use super::plan::credentials_file;

/// The embedded templates: (workspace file, template text).
const TEMPLATES: [(&str, &str); 8] = [
    ("AGENTS.md", include_str!("templates/AGENTS.md.j2")),
    ("SOUL.md", include_str!("templates/SOUL.md.j2")),
    ("IDENTITY.md", include_str!("templates/IDENTITY.md.j2")),
    ("USER.md", include_str!("templates/USER.md.j2")),
    ("MEMORY.md", include_str!("templates/MEMORY.md.j2")),
    ("TOOLS.md", include_str!("templates/TOOLS.md.j2")),
    ("HEARTBEAT.md", include_str!("templates/HEARTBEAT.md.j2")),
    ("BOOTSTRAP.md", include_str!("templates/BOOTSTRAP.md.j2")),
];

/// The credentials block, included where the generation keeps the credentials.
const CREDENTIALS: &str = include_str!("templates/credentials.md.j2");

/// A template that did not render.
#[derive(Debug, thiserror::Error)]
#[error("workspace file {file} did not render: {reason}")]
pub struct RenderError {
    /// The workspace file.
    pub file: String,
    /// What went wrong.
    pub reason: String,
}

/// Everything the templates may use about one agent.
#[derive(Debug, Clone, Serialize)]
pub struct FileContext {
    /// Display name.
    pub agent_name: String,
    /// Mission Control's id for the agent (`AGENT_ID`).
    pub agent_id: String,
    /// The agent's id on the gateway.
    pub gateway_agent_id: String,
    /// Its board's id, empty for a gateway's main agent.
    pub board_id: String,
    /// Its board's name, empty for a gateway's main agent.
    pub board_name: String,
    /// Leads its board.
    pub is_board_lead: bool,
    /// A gateway's main agent.
    pub is_main_agent: bool,
    /// Where the agent reaches Mission Control.
    pub base_url: String,
    /// Its plaintext token.
    pub auth_token: String,
    /// Its workspace directory.
    pub workspace_path: String,
    /// The gateway's workspace root.
    pub workspace_root: String,
    /// Its main session key.
    pub session_key: String,
    /// Seconds between heartbeats.
    pub heartbeat_interval_seconds: u32,
    /// Role from the identity profile (default `Generalist`, `Board Lead` for leads).
    pub identity_role: String,
    /// Communication style from the identity profile.
    pub identity_communication_style: String,
    /// Emoji from the identity profile.
    pub identity_emoji: String,
}

impl FileContext {
    /// The context for `agent` on a board named `board_name` (empty for a main agent).
    pub fn new(
        agent: &Agent,
        placement: &mc_store::AgentPlacement,
        board_name: String,
        base_url: &str,
        auth_token: &str,
        workspace_root: &str,
    ) -> Self {
        let profile = |key: &str, default: &str| {
            agent
                .identity_profile
                .as_ref()
                .and_then(|p| p.get(key))
                .cloned()
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            agent_name: agent.name.to_string(),
            agent_id: agent.id.to_string(),
            gateway_agent_id: placement.gateway_agent_id.clone(),
            board_id: agent.board_id.map(|b| b.to_string()).unwrap_or_default(),
            board_name,
            is_board_lead: agent.is_board_lead,
            is_main_agent: agent.is_gateway_main(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth_token: auth_token.to_owned(),
            workspace_path: placement.workspace_path.clone(),
            workspace_root: workspace_root.to_owned(),
            session_key: placement.session_key.clone(),
            heartbeat_interval_seconds: agent.heartbeat_config.interval_seconds,
            identity_role: profile(
                "role",
                if agent.is_board_lead {
                    "Board Lead"
                } else {
                    "Generalist"
                },
            ),
            identity_communication_style: profile(
                "communication_style",
                "direct, concise, practical",
            ),
            identity_emoji: profile("emoji", ":gear:"),
        }
    }
}

/// One rendered workspace file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceFile {
    /// File name, e.g. `AGENTS.md`.
    pub name: &'static str,
    /// Its content.
    pub content: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_template("credentials.md.j2", CREDENTIALS)
        .expect("the embedded credentials template parses");
    for (name, text) in TEMPLATES {
        env.add_template(name, text)
            .expect("every embedded template parses");
    }
    env
}

/// Renders every file `agent` gets (BOOTSTRAP.md only for board leads), with the
/// agent's IDENTITY.md and SOUL.md overrides, for a gateway of `generation`. Which of
/// them the gateway accepts is decided by the caller.
pub fn render_files(
    agent: &Agent,
    generation: GatewayGeneration,
    context: &FileContext,
) -> Result<Vec<WorkspaceFile>, RenderError> {
    let env = environment();
    let credentials_in = credentials_file(generation);
    let ctx = context! {
        credentials_file => credentials_in,
        credentials_in_agents => credentials_in == "AGENTS.md",
        ..minijinja::Value::from_serialize(context)
    };
    let mut files = Vec::new();
    for (name, _) in TEMPLATES {
        if name == "BOOTSTRAP.md" && !agent.is_board_lead {
            continue;
        }
        let override_text = match name {
            "IDENTITY.md" => agent.identity_template.as_deref(),
            "SOUL.md" => agent.soul_template.as_deref(),
            _ => None,
        };
        let failed = |e: minijinja::Error| RenderError {
            file: name.to_owned(),
            reason: e.to_string(),
        };
        let rendered = match override_text {
            Some(text) => env.render_str(text, &ctx).map_err(failed)?,
            None => env
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(failed)?,
        };
        files.push(WorkspaceFile {
            name,
            content: format!("{}\n", rendered.trim()),
        });
    }
    Ok(files)
}

/// The `KEY=value` pairs of the credential lines (``- `KEY=value` ``) in a workspace file.
pub fn parse_credentials(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let inner = line.trim().strip_prefix("- `")?.strip_suffix('`')?;
            let (key, value) = inner.split_once('=')?;
            key.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
                .then(|| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use mc_domain::agent::{AgentName, AgentStatus, HeartbeatConfig};
    use mc_domain::ids::{AgentId, BoardId, GatewayId};
    use mc_domain::time::Timestamp;

    use super::*;

    fn agent(is_board_lead: bool) -> Agent {
        let now = Timestamp::now();
        Agent {
            id: AgentId::new(),
            board_id: Some(BoardId::new()),
            gateway_id: GatewayId::new(),
            name: AgentName::parse("Ada", "name").unwrap(),
            is_board_lead,
            is_mc_agent: true,
            gateway_agent_id: None,
            workspace_path: None,
            openclaw_session_id: None,
            heartbeat_config: HeartbeatConfig::default(),
            identity_profile: None,
            identity_template: None,
            soul_template: None,
            last_provision_error: None,
            last_seen_at: None,
            reported_health: None,
            published_status: AgentStatus::Provisioning,
            enrolled_via: None,
            own_token_used: false,
            created_at: now,
            updated_at: now,
        }
    }

    fn context(agent: &Agent) -> FileContext {
        let placement = mc_store::AgentPlacement {
            gateway_agent_id: "mc-x".into(),
            workspace_path: "/ws/workspace-mc-x".into(),
            session_key: "agent:mc-x:main".into(),
        };
        FileContext::new(
            agent,
            &placement,
            "Ops".into(),
            "http://mc:8000/",
            "tok-123",
            "/ws",
        )
    }

    fn file<'a>(files: &'a [WorkspaceFile], name: &str) -> &'a str {
        &files.iter().find(|f| f.name == name).unwrap().content
    }

    #[test]
    fn credentials_are_in_tools_md_on_v3_and_in_agents_md_on_v4() {
        let worker = agent(false);
        let v3 = render_files(&worker, GatewayGeneration::V3, &context(&worker)).unwrap();
        let tools = parse_credentials(file(&v3, "TOOLS.md"));
        assert!(tools.contains(&("AUTH_TOKEN".into(), "tok-123".into())));
        assert!(tools.contains(&("BASE_URL".into(), "http://mc:8000".into())));
        assert!(parse_credentials(file(&v3, "AGENTS.md")).is_empty());
        let v4 = render_files(&worker, GatewayGeneration::V4, &context(&worker)).unwrap();
        let agents = parse_credentials(file(&v4, "AGENTS.md"));
        assert!(agents.contains(&("AGENT_ID".into(), worker.id.to_string())));
        assert!(agents.contains(&("AGENT_NAME".into(), "Ada".into())));
    }

    #[test]
    fn only_board_leads_get_bootstrap_md() {
        let lead = agent(true);
        let files = render_files(&lead, GatewayGeneration::V4, &context(&lead)).unwrap();
        assert!(file(&files, "BOOTSTRAP.md").contains("/healthz"));
        let worker = agent(false);
        let files = render_files(&worker, GatewayGeneration::V4, &context(&worker)).unwrap();
        assert!(!files.iter().any(|f| f.name == "BOOTSTRAP.md"));
    }

    #[test]
    fn an_override_naming_an_unknown_variable_is_an_error_naming_the_file() {
        let mut worker = agent(false);
        worker.soul_template = Some("Hi {{ no_such_thing }}".into());
        let error = render_files(&worker, GatewayGeneration::V3, &context(&worker)).unwrap_err();
        assert_eq!(error.file, "SOUL.md");
        worker.soul_template = Some("I am {{ agent_name }}.".into());
        let files = render_files(&worker, GatewayGeneration::V3, &context(&worker)).unwrap();
        assert_eq!(file(&files, "SOUL.md"), "I am Ada.\n");
    }
}
