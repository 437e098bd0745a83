//! Where an agent's credentials come from, in order (first found wins):
//!
//! 1. base URL: `--base-url` / `MC_BASE_URL`, else `BASE_URL=` in the workspace;
//! 2. agent token: `--token` / `MC_AGENT_TOKEN`, else the token file (`--token-file`, or
//!    [`TOKEN_FILE`] in the workspace: written by enrollment, so newer than what
//!    provisioning wrote), else `AUTH_TOKEN=` in the workspace;
//! 3. without a token: enrollment with `--enroll-token` / `MC_ENROLL_TOKEN`, the name
//!    (`--name`, else `AGENT_NAME=`) and optionally the board (`--board-id`, else
//!    `BOARD_ID=`); the agent's own token is then saved to the token file.
//!
//! Workspace values are `KEY=value` lines in the files of [`CREDENTIAL_FILES`], tried in
//! order. Provisioning writes them as a Markdown list of code spans
//! (``- `BASE_URL=http://...` ``); bare `KEY=value` lines are read too.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use mc_domain::token::{Secret, is_enrollment_token};
use uuid::Uuid;

/// Reads one `KEY=value` line (shared with the server, which writes them).
pub use mc_domain::credentials::credential_line;

/// The workspace files that may carry `KEY=value` credentials, tried in this order.
/// Newer gateways refuse `TOOLS.md`; when another file takes over, add it here.
pub const CREDENTIAL_FILES: &[&str] = &["TOOLS.md", "AGENTS.md"];

/// Where, inside the workspace, an enrolled agent keeps its own token (mode 0600).
pub const TOKEN_FILE: &str = ".mission-control/agent-token";

/// The workspace keys this client reads.
const KEYS: [&str; 4] = ["BASE_URL", "AUTH_TOKEN", "AGENT_NAME", "BOARD_ID"];

/// What the command line and the environment gave.
#[derive(Debug, Clone, Default)]
pub struct CredentialOptions {
    /// `--base-url` / `MC_BASE_URL`.
    pub base_url: Option<String>,
    /// `--token` / `MC_AGENT_TOKEN`.
    pub token: Option<Secret>,
    /// `--workspace`: the agent's workspace directory.
    pub workspace: Option<PathBuf>,
    /// `--token-file`: where the agent's own token is kept.
    pub token_file: Option<PathBuf>,
    /// `--enroll-token` / `MC_ENROLL_TOKEN`.
    pub enroll_token: Option<Secret>,
    /// `--name`: the agent's name, for enrollment.
    pub name: Option<String>,
    /// `--board-id`: the board to enroll on.
    pub board_id: Option<String>,
}

/// Where a value came from; named in error messages so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag or its environment variable, e.g. `--token / MC_AGENT_TOKEN`.
    Flag(&'static str),
    /// A file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(name) => f.write_str(name),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How the agent authenticates.
#[derive(Debug, Clone)]
pub enum Credential {
    /// With its own agent token.
    Token {
        /// The token.
        token: Secret,
        /// Where it came from.
        origin: Origin,
    },
    /// First contact: enroll with a board's enrollment token, then keep the agent's own
    /// token in `save_to`.
    Enroll {
        /// The `mce_...` enrollment token.
        token: Secret,
        /// The agent's name.
        name: String,
        /// The board, when given (else the enrollment token's board).
        board_id: Option<Uuid>,
        /// The token file to write.
        save_to: PathBuf,
    },
}

/// The resolved credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The server's base URL.
    pub base_url: String,
    /// Where the base URL came from.
    pub base_url_origin: Origin,
    /// How to authenticate.
    pub credential: Credential,
}

/// Why credentials could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// `--workspace` names no directory.
    #[error("the workspace {0} is not a directory")]
    WorkspaceMissing(PathBuf),
    /// A credential file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No base URL anywhere.
    #[error(
        "no Mission Control URL: pass --base-url or set MC_BASE_URL{}",
        looked_in_suffix(.0)
    )]
    NoBaseUrl(Option<PathBuf>),
    /// No agent token and no enrollment token.
    #[error(
        "no agent credentials: pass --token or set MC_AGENT_TOKEN, or enroll with --enroll-token (or MC_ENROLL_TOKEN) and --name{}",
        looked_in_suffix(.0)
    )]
    NoToken(Option<PathBuf>),
    /// Enrollment needs the agent's name.
    #[error("enrolling needs the agent's name: pass --name (or AGENT_NAME= in the workspace)")]
    EnrollWithoutName,
    /// Enrollment needs somewhere to keep the token it returns.
    #[error(
        "enrolling returns the agent's own token once, and it must be kept: pass --workspace DIR or --token-file PATH"
    )]
    EnrollWithoutTokenFile,
    /// A board id that is not a UUID.
    #[error("the board id {value:?} from {origin} is not a UUID")]
    InvalidBoardId {
        /// The value.
        value: String,
        /// Where it came from.
        origin: Origin,
    },
    /// An enrollment token where an agent token belongs.
    #[error(
        "{0} holds an enrollment token (mce_...); pass it with --enroll-token (or MC_ENROLL_TOKEN) instead"
    )]
    EnrollmentTokenAsAgentToken(Origin),
    /// `--enroll-token` got something that is not an enrollment token.
    #[error(
        "--enroll-token / MC_ENROLL_TOKEN must be an enrollment token (mce_...); an agent token goes in --token"
    )]
    AgentTokenAsEnrollmentToken,
}

fn looked_in_suffix(workspace: &Option<PathBuf>) -> String {
    match workspace {
        Some(dir) => format!(
            " (the workspace {} has none in {} or {TOKEN_FILE})",
            dir.display(),
            CREDENTIAL_FILES.join(", ")
        ),
        None => ", or point --workspace at the agent's workspace".to_owned(),
    }
}

/// Resolves the credentials from the options and the files they point at.
pub fn resolve(options: CredentialOptions) -> Result<Credentials, CredentialsError> {
    let workspace = match &options.workspace {
        Some(dir) if !dir.is_dir() => return Err(CredentialsError::WorkspaceMissing(dir.clone())),
        Some(dir) => Some(WorkspaceValues::read(dir)?),
        None => None,
    };
    let from_workspace = |key: &str| workspace.as_ref().and_then(|w| w.get(key));

    let (base_url, base_url_origin) = match (options.base_url, from_workspace("BASE_URL")) {
        (Some(url), _) => (url, Origin::Flag("--base-url / MC_BASE_URL")),
        (None, Some((url, path))) => (url.to_owned(), Origin::File(path.to_owned())),
        (None, None) => return Err(CredentialsError::NoBaseUrl(options.workspace)),
    };

    let token_file = options
        .token_file
        .clone()
        .or_else(|| options.workspace.as_ref().map(|dir| dir.join(TOKEN_FILE)));
    let stored = match &token_file {
        Some(path) => read_token_file(path)?.map(|token| (token, Origin::File(path.clone()))),
        None => None,
    };
    let agent_token = options
        .token
        .map(|token| (token, Origin::Flag("--token / MC_AGENT_TOKEN")))
        .or(stored)
        .or_else(|| {
            from_workspace("AUTH_TOKEN")
                .map(|(token, path)| (Secret::new(token), Origin::File(path.to_owned())))
        });

    let credential = match (agent_token, options.enroll_token) {
        (Some((token, origin)), _) => {
            if is_enrollment_token(token.expose()) {
                return Err(CredentialsError::EnrollmentTokenAsAgentToken(origin));
            }
            Credential::Token { token, origin }
        }
        (None, Some(token)) => {
            if !is_enrollment_token(token.expose()) {
                return Err(CredentialsError::AgentTokenAsEnrollmentToken);
            }
            let name = options
                .name
                .or_else(|| from_workspace("AGENT_NAME").map(|(name, _)| name.to_owned()))
                .ok_or(CredentialsError::EnrollWithoutName)?;
            let board_id = match (options.board_id, from_workspace("BOARD_ID")) {
                (Some(value), _) => Some(parse_board_id(value, Origin::Flag("--board-id"))?),
                (None, Some((value, path))) => Some(parse_board_id(
                    value.to_owned(),
                    Origin::File(path.to_owned()),
                )?),
                (None, None) => None,
            };
            let save_to = token_file.ok_or(CredentialsError::EnrollWithoutTokenFile)?;
            Credential::Enroll {
                token,
                name,
                board_id,
                save_to,
            }
        }
        (None, None) => return Err(CredentialsError::NoToken(options.workspace)),
    };
    Ok(Credentials {
        base_url,
        base_url_origin,
        credential,
    })
}

fn parse_board_id(value: String, origin: Origin) -> Result<Uuid, CredentialsError> {
    Uuid::parse_str(value.trim()).map_err(|_| CredentialsError::InvalidBoardId { value, origin })
}

/// The `KEY=value` pairs found in a workspace's credential files.
struct WorkspaceValues {
    /// Per key, the first value found and the file it is in.
    values: Vec<(&'static str, String, PathBuf)>,
}

impl WorkspaceValues {
    fn read(dir: &Path) -> Result<Self, CredentialsError> {
        let mut values: Vec<(&'static str, String, PathBuf)> = Vec::new();
        for file in CREDENTIAL_FILES {
            let path = dir.join(file);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CredentialsError::Read { path, source }),
            };
            for (key, value) in text.lines().filter_map(credential_line) {
                if let Some(known) = KEYS.iter().find(|k| **k == key)
                    && !values.iter().any(|(k, _, _)| k == known)
                {
                    values.push((known, value.to_owned(), path.clone()));
                }
            }
        }
        Ok(Self { values })
    }

    fn get(&self, key: &str) -> Option<(&str, &Path)> {
        self.values
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, value, path)| (value.as_str(), path.as_path()))
    }
}

/// The token kept in `path`; `None` when the file does not exist or is empty.
pub fn read_token_file(path: &Path) -> Result<Option<Secret>, CredentialsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim()).filter(|t| !t.is_empty()).map(Secret::new)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredentialsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the token to `path` with mode 0600, replacing the file atomically; creates the
/// parent directory (mode 0700) when missing.
pub fn save_token(path: &Path, token: &Secret) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the token file path has no file name"))?;
    let mut temporary = parent.join(file_name);
    temporary.set_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(format!("{}\n", token.expose()).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const BOARD: &str = "550e8400-e29b-41d4-a716-446655440000";

    fn workspace(tools_md: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("TOOLS.md"), tools_md).unwrap();
        dir
    }

    fn in_workspace(dir: &Path) -> CredentialOptions {
        CredentialOptions {
            workspace: Some(dir.to_owned()),
            ..CredentialOptions::default()
        }
    }

    #[test]
    fn a_provisioned_workspace_yields_url_and_token() {
        let dir = workspace(
            "# TOOLS\n\n- `BASE_URL=http://10.0.0.5:8000`\n- `AUTH_TOKEN=agent-secret`\n- `AGENT_ID=7`\n",
        );
        let resolved = resolve(in_workspace(dir.path())).unwrap();
        assert_eq!(resolved.base_url, "http://10.0.0.5:8000");
        let tools = dir.path().join("TOOLS.md");
        assert_eq!(resolved.base_url_origin, Origin::File(tools.clone()));
        match resolved.credential {
            Credential::Token { token, origin } => {
                assert_eq!(token.expose(), "agent-secret");
                assert_eq!(origin, Origin::File(tools));
            }
            other => panic!("expected a token, got {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_the_token_file_which_wins_over_the_workspace_file() {
        let dir = workspace("BASE_URL=http://ws\nAUTH_TOKEN=from-tools\n");
        let token_file = dir.path().join(TOKEN_FILE);
        save_token(&token_file, &Secret::new("from-token-file")).unwrap();

        let resolved = resolve(in_workspace(dir.path())).unwrap();
        let Credential::Token { token, origin } = resolved.credential else {
            panic!("a token")
        };
        assert_eq!(token.expose(), "from-token-file");
        assert_eq!(origin, Origin::File(token_file));

        let resolved = resolve(CredentialOptions {
            base_url: Some("http://flag".into()),
            token: Some(Secret::new("from-flag")),
            ..in_workspace(dir.path())
        })
        .unwrap();
        assert_eq!(resolved.base_url, "http://flag");
        let Credential::Token { token, .. } = resolved.credential else {
            panic!("a token")
        };
        assert_eq!(token.expose(), "from-flag");
    }

    #[test]
    fn without_a_token_an_enrollment_token_enrolls_with_the_workspace_name_and_board() {
        let dir = workspace(&format!(
            "- `BASE_URL=http://ws`\n- `AGENT_NAME=Worker 1`\n- `BOARD_ID={BOARD}`\n"
        ));
        let resolved = resolve(CredentialOptions {
            enroll_token: Some(Secret::new("mce_abc")),
            ..in_workspace(dir.path())
        })
        .unwrap();
        match resolved.credential {
            Credential::Enroll {
                name,
                board_id,
                save_to,
                ..
            } => {
                assert_eq!(name, "Worker 1");
                assert_eq!(board_id, Some(Uuid::parse_str(BOARD).unwrap()));
                assert_eq!(save_to, dir.path().join(TOKEN_FILE));
            }
            other => panic!("expected enrollment, got {other:?}"),
        }
    }

    #[test]
    fn a_workspace_without_credentials_is_an_error_naming_the_files_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve(CredentialOptions {
            base_url: Some("http://x".into()),
            ..in_workspace(dir.path())
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("no agent credentials"), "{error}");
        assert!(error.contains("TOOLS.md"), "{error}");
        assert!(error.contains(&dir.path().display().to_string()), "{error}");

        let error = resolve(in_workspace(dir.path())).unwrap_err().to_string();
        assert!(error.contains("no Mission Control URL"), "{error}");
    }

    #[test]
    fn a_missing_workspace_directory_is_named() {
        let error = resolve(CredentialOptions {
            workspace: Some("/nonexistent/workspace".into()),
            ..CredentialOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("/nonexistent/workspace"), "{error}");
    }

    #[test]
    fn tokens_in_the_wrong_place_are_explained() {
        let error = resolve(CredentialOptions {
            base_url: Some("http://x".into()),
            token: Some(Secret::new("mce_abc")),
            ..CredentialOptions::default()
        })
        .unwrap_err();
        assert!(matches!(
            error,
            CredentialsError::EnrollmentTokenAsAgentToken(_)
        ));
        let error = resolve(CredentialOptions {
            base_url: Some("http://x".into()),
            enroll_token: Some(Secret::new("agent-token")),
            name: Some("a".into()),
            token_file: Some("/tmp/x".into()),
            ..CredentialOptions::default()
        })
        .unwrap_err();
        assert!(matches!(
            error,
            CredentialsError::AgentTokenAsEnrollmentToken
        ));
    }

    #[test]
    fn enrollment_needs_a_name_a_place_for_the_token_and_a_valid_board() {
        let base = CredentialOptions {
            base_url: Some("http://x".into()),
            enroll_token: Some(Secret::new("mce_abc")),
            ..CredentialOptions::default()
        };
        let error = resolve(CredentialOptions {
            token_file: Some("/tmp/t".into()),
            ..base.clone()
        })
        .unwrap_err();
        assert!(matches!(error, CredentialsError::EnrollWithoutName));
        let error = resolve(CredentialOptions {
            name: Some("a".into()),
            ..base.clone()
        })
        .unwrap_err();
        assert!(matches!(error, CredentialsError::EnrollWithoutTokenFile));
        let error = resolve(CredentialOptions {
            name: Some("a".into()),
            token_file: Some("/tmp/t".into()),
            board_id: Some("board-7".into()),
            ..base
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("board-7") && error.contains("UUID"),
            "{error}"
        );
    }

    #[test]
    fn a_saved_token_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/agent-token");
        save_token(&path, &Secret::new("one")).unwrap();
        save_token(&path, &Secret::new("two")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let parent_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(parent_mode & 0o777, 0o700);
        assert_eq!(read_token_file(&path).unwrap().unwrap().expose(), "two");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
