//! Workspace files, rendered with `minijinja` in strict mode (a template naming an
//! unknown variable is an error, never a blank) from templates compiled into the binary.
//!
//! An operator may override any of them by name from a directory (`--templates-dir`):
//! `AGENTS.md.j2`, `SOUL.md.j2`, ..., and `credentials.md.j2`, the credentials block the
//! others include. [`Templates::load`] checks the whole set at start-up, so a broken
//! override stops the server with an error naming the file instead of failing agents one
//! by one later: every template must parse, name only known variables, render for every
//! kind of agent on both gateway generations, and still write the credentials in a form
//! Mission Control reads back (a template sync reuses the token it finds there).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mc_domain::agent::Agent;
use mc_domain::credentials::credential_value;
use mc_gateway::GatewayGeneration;
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;

use super::plan::credentials_file;

/// The embedded templates: (workspace file, template name, template text).
const TEMPLATES: [(&str, &str, &str); 8] = [
    (
        "AGENTS.md",
        "AGENTS.md.j2",
        include_str!("templates/AGENTS.md.j2"),
    ),
    (
        "SOUL.md",
        "SOUL.md.j2",
        include_str!("templates/SOUL.md.j2"),
    ),
    (
        "IDENTITY.md",
        "IDENTITY.md.j2",
        include_str!("templates/IDENTITY.md.j2"),
    ),
    (
        "USER.md",
        "USER.md.j2",
        include_str!("templates/USER.md.j2"),
    ),
    (
        "MEMORY.md",
        "MEMORY.md.j2",
        include_str!("templates/MEMORY.md.j2"),
    ),
    (
        "TOOLS.md",
        "TOOLS.md.j2",
        include_str!("templates/TOOLS.md.j2"),
    ),
    (
        "HEARTBEAT.md",
        "HEARTBEAT.md.j2",
        include_str!("templates/HEARTBEAT.md.j2"),
    ),
    (
        "BOOTSTRAP.md",
        "BOOTSTRAP.md.j2",
        include_str!("templates/BOOTSTRAP.md.j2"),
    ),
];

/// The credentials block's template name; the workspace files include it.
const CREDENTIALS_TEMPLATE: &str = "credentials.md.j2";

/// The credentials block, included where the generation keeps the credentials.
const CREDENTIALS: &str = include_str!("templates/credentials.md.j2");

/// Variables every template may use besides the [`FileContext`] fields.
const EXTRA_VARIABLES: [&str; 2] = ["credentials_file", "credentials_in_agents"];

/// A template that did not render.
#[derive(Debug, thiserror::Error)]
#[error("workspace file {file} did not render: {reason}")]
pub struct RenderError {
    /// The workspace file.
    pub file: String,
    /// What went wrong.
    pub reason: String,
}

/// Why the template set could not be loaded; every variant names the template file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The templates directory cannot be listed.
    #[error("cannot read the templates directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A template file cannot be read.
    #[error("cannot read the template {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `.j2` file whose name is no known template (a typo would otherwise be ignored).
    #[error("{path} is not a known template; the known ones are {known}")]
    UnknownTemplate {
        /// The file.
        path: String,
        /// The known template names.
        known: String,
    },
    /// A template does not parse.
    #[error("the template {path} does not parse: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A template names variables that do not exist (strict mode would fail on them).
    #[error("the template {path} uses unknown variables: {unknown}; the known ones are {known}")]
    UnknownVariables {
        /// The file.
        path: String,
        /// The unknown names.
        unknown: String,
        /// The known names.
        known: String,
    },
    /// A template fails when rendered for a sample agent.
    #[error("the template {path} does not render for a {kind}: {reason}")]
    Render {
        /// The file.
        path: String,
        /// The sample rendered (e.g. "board lead on a protocol 4 gateway").
        kind: String,
        /// What went wrong.
        reason: String,
    },
    /// The credentials are no longer written in a form Mission Control reads back.
    #[error(
        "the template {path} no longer writes {key} into {file} for a {kind}; keep {{% include \"credentials.md.j2\" %}} in it"
    )]
    CredentialsLost {
        /// The template responsible for the credentials file.
        path: String,
        /// The workspace file that should carry them.
        file: String,
        /// The missing credential.
        key: String,
        /// The sample rendered.
        kind: String,
    },
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
    /// The OpenAPI tag of the operations meant for it: `agent-main`, `agent-lead` or
    /// `agent-worker`.
    pub role_tag: String,
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
    /// Seconds of silence after which it is shown offline.
    pub missing_tolerance_seconds: u32,
    /// Role from the identity profile (default `Generalist`, `Board Lead` for leads).
    pub identity_role: String,
    /// Communication style from the identity profile.
    pub identity_communication_style: String,
    /// Emoji from the identity profile.
    pub identity_emoji: String,
}

/// The OpenAPI role tag of an agent.
pub fn role_tag(is_main_agent: bool, is_board_lead: bool) -> &'static str {
    match (is_main_agent, is_board_lead) {
        (true, _) => "agent-main",
        (false, true) => "agent-lead",
        (false, false) => "agent-worker",
    }
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
            role_tag: role_tag(agent.is_gateway_main(), agent.is_board_lead).to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth_token: auth_token.to_owned(),
            workspace_path: placement.workspace_path.clone(),
            workspace_root: workspace_root.to_owned(),
            session_key: placement.session_key.clone(),
            heartbeat_interval_seconds: agent.heartbeat_config.interval_seconds,
            missing_tolerance_seconds: agent.heartbeat_config.missing_tolerance,
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

    /// The names the templates may use.
    fn variable_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        };
        names.extend(EXTRA_VARIABLES.iter().map(|n| (*n).to_owned()));
        names.sort();
        names
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

/// Where a template's text came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    BuiltIn,
    File(PathBuf),
}

/// The workspace templates in effect: the compiled-in ones, some perhaps overridden.
pub struct Templates {
    env: Environment<'static>,
    origins: BTreeMap<&'static str, Origin>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("overridden", &self.overridden())
            .finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::built_in()
    }
}

fn template_names() -> impl Iterator<Item = &'static str> {
    TEMPLATES
        .iter()
        .map(|(_, name, _)| *name)
        .chain([CREDENTIALS_TEMPLATE])
}

fn base_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

impl Templates {
    /// The compiled-in templates (checked by this module's tests).
    pub fn built_in() -> Self {
        let mut env = base_environment();
        env.add_template(CREDENTIALS_TEMPLATE, CREDENTIALS)
            .expect("the embedded credentials template parses");
        for (_, name, text) in TEMPLATES {
            env.add_template(name, text)
                .expect("every embedded template parses");
        }
        Self {
            env,
            origins: template_names().map(|n| (n, Origin::BuiltIn)).collect(),
        }
    }

    /// The compiled-in templates with those found in `dir` (by name) in their place,
    /// checked as a whole (see the module documentation). Files not ending in `.j2` are
    /// ignored.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut templates = Self::built_in();
        if let Some(dir) = dir {
            templates.override_from(dir)?;
        }
        templates.check()?;
        Ok(templates)
    }

    /// The names of the templates replaced from the templates directory.
    pub fn overridden(&self) -> Vec<&'static str> {
        self.origins
            .iter()
            .filter(|(_, origin)| matches!(origin, Origin::File(_)))
            .map(|(name, _)| *name)
            .collect()
    }

    fn override_from(&mut self, dir: &Path) -> Result<(), TemplateError> {
        let read_dir = |source| TemplateError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if path.extension().is_some_and(|e| e == "j2") {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let Some(name) = template_names().find(|n| *n == file_name) else {
                return Err(TemplateError::UnknownTemplate {
                    path: path.display().to_string(),
                    known: template_names().collect::<Vec<_>>().join(", "),
                });
            };
            let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                path: path.clone(),
                source,
            })?;
            self.env
                .add_template_owned(name, text)
                .map_err(|e| TemplateError::Syntax {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            self.origins.insert(name, Origin::File(path));
        }
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        match self.origins.get(name) {
            Some(Origin::File(path)) => path.display().to_string(),
            _ => format!("{name} (built in)"),
        }
    }

    /// Static and sample-rendering checks of the whole set.
    fn check(&self) -> Result<(), TemplateError> {
        let samples = sample_contexts();
        let known = samples[0].1.variable_names();
        for name in template_names() {
            let template = self
                .env
                .get_template(name)
                .map_err(|e| TemplateError::Syntax {
                    path: self.describe(name),
                    reason: e.to_string(),
                })?;
            let globals: Vec<&str> = self.env.globals().map(|(n, _)| n).collect();
            let mut unknown: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !known.contains(v) && !globals.contains(&v.as_str()))
                .collect();
            if !unknown.is_empty() {
                unknown.sort();
                return Err(TemplateError::UnknownVariables {
                    path: self.describe(name),
                    unknown: unknown.join(", "),
                    known: known.join(", "),
                });
            }
        }
        for (kind, context) in &samples {
            for generation in [GatewayGeneration::V3, GatewayGeneration::V4] {
                let kind = format!("{kind} on a protocol {} gateway", generation.protocol());
                let files = self
                    .render_with(generation, context, None, None)
                    .map_err(|e| TemplateError::Render {
                        path: self.describe(&template_of(&e.file)),
                        kind: kind.clone(),
                        reason: e.reason,
                    })?;
                let file = credentials_file(generation);
                let text = files
                    .iter()
                    .find(|f| f.name == file)
                    .map_or("", |f| f.content.as_str());
                // What a template sync and the agent read back.
                let expected = [
                    ("BASE_URL", context.base_url.as_str()),
                    ("AUTH_TOKEN", context.auth_token.as_str()),
                    ("AGENT_ID", context.agent_id.as_str()),
                ];
                for (key, value) in expected {
                    if credential_value(text, key) != Some(value) {
                        let culprit = if self.overridden().contains(&CREDENTIALS_TEMPLATE) {
                            CREDENTIALS_TEMPLATE.to_owned()
                        } else {
                            template_of(file)
                        };
                        return Err(TemplateError::CredentialsLost {
                            path: self.describe(&culprit),
                            file: file.to_owned(),
                            key: key.to_owned(),
                            kind: kind.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Renders every file `agent` gets (BOOTSTRAP.md only for board leads), with the
    /// agent's IDENTITY.md and SOUL.md overrides, for a gateway of `generation`. Which of
    /// them the gateway accepts is decided by the caller.
    pub fn render_files(
        &self,
        agent: &Agent,
        generation: GatewayGeneration,
        context: &FileContext,
    ) -> Result<Vec<WorkspaceFile>, RenderError> {
        self.render_with(
            generation,
            context,
            agent.identity_template.as_deref(),
            agent.soul_template.as_deref(),
        )
    }

    fn render_with(
        &self,
        generation: GatewayGeneration,
        context: &FileContext,
        identity_override: Option<&str>,
        soul_override: Option<&str>,
    ) -> Result<Vec<WorkspaceFile>, RenderError> {
        let credentials_in = credentials_file(generation);
        let ctx = context! {
            credentials_file => credentials_in,
            credentials_in_agents => credentials_in == "AGENTS.md",
            ..minijinja::Value::from_serialize(context)
        };
        let mut files = Vec::new();
        for (name, template, _) in TEMPLATES {
            if name == "BOOTSTRAP.md" && !context.is_board_lead {
                continue;
            }
            let override_text = match name {
                "IDENTITY.md" => identity_override,
                "SOUL.md" => soul_override,
                _ => None,
            };
            let failed = |e: minijinja::Error| RenderError {
                file: name.to_owned(),
                reason: e.to_string(),
            };
            let rendered = match override_text {
                Some(text) => self.env.render_str(text, &ctx).map_err(failed)?,
                None => self
                    .env
                    .get_template(template)
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
}

/// The template a workspace file is rendered from.
fn template_of(file: &str) -> String {
    format!("{file}.j2")
}

/// One sample context per kind of agent, for the start-up checks.
fn sample_contexts() -> [(&'static str, FileContext); 3] {
    let sample = |kind: &'static str, is_main_agent: bool, is_board_lead: bool| {
        let key = if is_main_agent {
            "mc-gateway-sample"
        } else {
            "mc-sample"
        };
        (
            kind,
            FileContext {
                agent_name: "Sample Agent".to_owned(),
                agent_id: "00000000-0000-4000-8000-000000000001".to_owned(),
                gateway_agent_id: key.to_owned(),
                board_id: if is_main_agent {
                    String::new()
                } else {
                    "00000000-0000-4000-8000-000000000002".to_owned()
                },
                board_name: if is_main_agent {
                    String::new()
                } else {
                    "Sample Board".to_owned()
                },
                is_board_lead,
                is_main_agent,
                role_tag: role_tag(is_main_agent, is_board_lead).to_owned(),
                base_url: "http://mission-control.invalid:8000".to_owned(),
                auth_token: "sample-token-0123456789".to_owned(),
                workspace_path: format!("/srv/openclaw/workspace-{key}"),
                workspace_root: "/srv/openclaw".to_owned(),
                session_key: format!("agent:{key}:main"),
                heartbeat_interval_seconds: 60,
                missing_tolerance_seconds: 120,
                identity_role: "Generalist".to_owned(),
                identity_communication_style: "direct".to_owned(),
                identity_emoji: ":gear:".to_owned(),
            },
        )
    };
    [
        sample("board worker", false, false),
        sample("board lead", false, true),
        sample("gateway main agent", true, false),
    ]
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use mc_domain::agent::AgentName;
    use mc_domain::ids::{AgentId, BoardId, GatewayId};
    use mc_domain::time::Timestamp;

    use super::*;

    const AGENT: &str = "0190a0b0-0000-7000-8000-0000000000a1";
    const BOARD: &str = "0190a0b0-0000-7000-8000-0000000000b1";
    const GATEWAY: &str = "0190a0b0-0000-7000-8000-0000000000c1";

    /// A worker, a board lead or (without a board) a gateway's main agent, with fixed ids.
    fn agent(board: bool, is_board_lead: bool) -> Agent {
        Agent {
            id: AgentId::from_str(AGENT).unwrap(),
            is_board_lead,
            ..Agent::new(
                board.then(|| BoardId::from_str(BOARD).unwrap()),
                GatewayId::from_str(GATEWAY).unwrap(),
                AgentName::parse("Ada", "name").unwrap(),
                Timestamp::now(),
            )
        }
    }

    fn context(agent: &Agent) -> FileContext {
        let placement = mc_store::AgentPlacement {
            gateway_agent_id: "mc-x".into(),
            workspace_path: "/ws/workspace-mc-x".into(),
            session_key: "agent:mc-x:main".into(),
        };
        let board = if agent.board_id.is_some() { "Ops" } else { "" };
        FileContext::new(
            agent,
            &placement,
            board.into(),
            "http://mc:8000/",
            "tok-123",
            "/ws",
        )
    }

    fn render(agent: &Agent, generation: GatewayGeneration) -> Vec<WorkspaceFile> {
        Templates::built_in()
            .render_files(agent, generation, &context(agent))
            .unwrap()
    }

    fn file<'a>(files: &'a [WorkspaceFile], name: &str) -> &'a str {
        &files.iter().find(|f| f.name == name).unwrap().content
    }

    #[test]
    fn the_built_in_templates_pass_the_start_up_checks() {
        let templates = Templates::load(None).unwrap();
        assert!(templates.overridden().is_empty());
    }

    /// Every file each kind of agent gets, on both generations, byte for byte. To accept
    /// a deliberate change: `INSTA_UPDATE=always cargo test -p mc-server --lib templates`,
    /// then review the diff of `src/provision/snapshots/`.
    #[test]
    fn rendered_workspaces_match_their_snapshots() {
        for (kind, agent) in [
            ("worker", agent(true, false)),
            ("lead", agent(true, true)),
            ("main", agent(false, false)),
        ] {
            for generation in [GatewayGeneration::V3, GatewayGeneration::V4] {
                let files = render(&agent, generation);
                let all: String = files
                    .iter()
                    .filter(|f| generation.accepts_workspace_file(f.name))
                    .map(|f| format!("===== {} =====\n{}", f.name, f.content))
                    .collect();
                let name = format!("workspace_{kind}_protocol_{}", generation.protocol());
                insta::assert_snapshot!(name, all);
            }
        }
    }

    #[test]
    fn credentials_are_in_tools_md_on_v3_and_in_agents_md_on_v4() {
        let worker = agent(true, false);
        let v3 = render(&worker, GatewayGeneration::V3);
        let tools = file(&v3, "TOOLS.md");
        assert_eq!(credential_value(tools, "AUTH_TOKEN"), Some("tok-123"));
        assert_eq!(credential_value(tools, "BASE_URL"), Some("http://mc:8000"));
        assert_eq!(credential_value(file(&v3, "AGENTS.md"), "AUTH_TOKEN"), None);
        let v4 = render(&worker, GatewayGeneration::V4);
        let agents = file(&v4, "AGENTS.md");
        assert_eq!(credential_value(agents, "AGENT_ID"), Some(AGENT));
        assert_eq!(credential_value(agents, "AGENT_NAME"), Some("Ada"));
    }

    #[test]
    fn every_agent_learns_its_heartbeat_its_token_and_its_role_tag() {
        for (agent, tag) in [
            (agent(true, false), "agent-worker"),
            (agent(true, true), "agent-lead"),
            (agent(false, false), "agent-main"),
        ] {
            for generation in [GatewayGeneration::V3, GatewayGeneration::V4] {
                let files = render(&agent, generation);
                let guide = file(&files, "AGENTS.md");
                for expected in [
                    "POST $BASE_URL/api/v1/agent/heartbeat",
                    "X-Agent-Token",
                    "every 60 seconds",
                    "After\n120 seconds",
                    "/openapi.json",
                    &format!("`{tag}`"),
                    credentials_file(generation),
                ] {
                    assert!(
                        guide.contains(expected),
                        "{tag}: no {expected:?} in\n{guide}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_board_leads_get_bootstrap_md() {
        let files = render(&agent(true, true), GatewayGeneration::V4);
        assert!(file(&files, "BOOTSTRAP.md").contains("/healthz"));
        for not_lead in [agent(true, false), agent(false, false)] {
            let files = render(&not_lead, GatewayGeneration::V4);
            assert!(!files.iter().any(|f| f.name == "BOOTSTRAP.md"));
        }
    }

    #[test]
    fn an_override_naming_an_unknown_variable_is_an_error_naming_the_file() {
        let mut worker = agent(true, false);
        worker.soul_template = Some("Hi {{ no_such_thing }}".into());
        let error = Templates::built_in()
            .render_files(&worker, GatewayGeneration::V3, &context(&worker))
            .unwrap_err();
        assert_eq!(error.file, "SOUL.md");
        worker.soul_template = Some("I am {{ agent_name }}.".into());
        let files = render(&worker, GatewayGeneration::V3);
        assert_eq!(file(&files, "SOUL.md"), "I am Ada.\n");
    }

    fn templates_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn a_templates_directory_overrides_by_name_and_ignores_other_files() {
        let dir = templates_dir(&[
            (
                "SOUL.md.j2",
                "You are {{ agent_name }}, and you are careful.",
            ),
            ("README.txt", "notes for the operator"),
        ]);
        let templates = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(templates.overridden(), ["SOUL.md.j2"]);
        let worker = agent(true, false);
        let files = templates
            .render_files(&worker, GatewayGeneration::V4, &context(&worker))
            .unwrap();
        assert_eq!(
            file(&files, "SOUL.md"),
            "You are Ada, and you are careful.\n"
        );
        assert!(file(&files, "AGENTS.md").contains("agent-worker"));
    }

    fn load_error(files: &[(&str, &str)]) -> (String, String) {
        let dir = templates_dir(files);
        let error = Templates::load(Some(dir.path())).unwrap_err().to_string();
        (error, dir.path().display().to_string())
    }

    #[test]
    fn a_broken_override_is_a_start_up_error_naming_the_file() {
        let (error, dir) = load_error(&[("USER.md.j2", "{% if board_name %}unclosed")]);
        assert!(error.contains(&format!("{dir}/USER.md.j2")), "{error}");
        assert!(error.contains("does not parse"), "{error}");

        let (error, dir) = load_error(&[("MEMORY.md.j2", "{{ agent_name }} {{ agent_nmae }}")]);
        assert!(error.contains(&format!("{dir}/MEMORY.md.j2")), "{error}");
        assert!(error.contains("unknown variables: agent_nmae"), "{error}");

        let (error, dir) = load_error(&[("AGENT.md.j2", "typo in the name")]);
        assert!(error.contains(&format!("{dir}/AGENT.md.j2")), "{error}");
        assert!(error.contains("not a known template"), "{error}");
    }

    #[test]
    fn an_override_that_stops_rendering_for_some_agent_is_refused() {
        // Parses and names known variables, but fails when rendered for a lead.
        let (error, dir) = load_error(&[(
            "BOOTSTRAP.md.j2",
            "{% if is_board_lead %}{{ agent_name.no_such_attribute }}{% endif %}",
        )]);
        assert!(error.contains(&format!("{dir}/BOOTSTRAP.md.j2")), "{error}");
        assert!(error.contains("board lead"), "{error}");
    }

    #[test]
    fn an_override_that_drops_the_credentials_is_refused() {
        let (error, dir) = load_error(&[("TOOLS.md.j2", "# TOOLS\nAsk the operator.")]);
        assert!(error.contains(&format!("{dir}/TOOLS.md.j2")), "{error}");
        assert!(
            error.contains("AUTH_TOKEN") || error.contains("BASE_URL"),
            "{error}"
        );
        let (error, dir) = load_error(&[("credentials.md.j2", "- token: {{ auth_token }}")]);
        assert!(
            error.contains(&format!("{dir}/credentials.md.j2")),
            "{error}"
        );
        assert!(error.contains("include"), "{error}");
    }
}
