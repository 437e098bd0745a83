//! Boards: validated names and slugs, and the rule flags that govern work on a board.

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::ids::{BoardId, GatewayId, OrganizationId};
use crate::time::Timestamp;

/// A non-blank, trimmed text of at most `max` characters, for the body field `field`.
pub fn required_text(raw: &str, field: &str, max: usize) -> Result<String, ValidationErrors> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ValidationErrors::body(
            field,
            format!("{field} is required"),
        ));
    }
    if trimmed.chars().count() > max {
        return Err(ValidationErrors::body(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A board slug: 1 to 100 characters of lowercase letters, digits and single hyphens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    /// Validates the body field `slug`.
    pub fn parse(raw: &str) -> Result<Self, ValidationErrors> {
        let slug = raw.trim();
        let valid = !slug.is_empty()
            && slug.len() <= 100
            && slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !slug.starts_with('-')
            && !slug.ends_with('-')
            && !slug.contains("--");
        if !valid {
            return Err(ValidationErrors::body(
                "slug",
                "slug must be 1 to 100 lowercase letters, digits or single hyphens, e.g. \"ops-team\"",
            ));
        }
        Ok(Self(slug.to_owned()))
    }

    /// Rebuilds a slug read back from storage.
    pub fn from_stored(slug: String) -> Self {
        Self(slug)
    }

    /// The slug text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Rules that govern how tasks move on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardRules {
    /// A task can be marked done only with an approved linked approval.
    pub require_approval_for_done: bool,
    /// A task must pass through review before done.
    pub require_review_before_done: bool,
    /// Moving a task to review needs a comment.
    pub comment_required_for_review: bool,
    /// No status change while a linked approval is pending.
    pub block_status_changes_with_pending_approval: bool,
    /// Only the board lead changes task status.
    pub only_lead_can_change_status: bool,
    /// Worker agents allowed on the board (the lead excluded).
    pub max_agents: u32,
}

impl Default for BoardRules {
    fn default() -> Self {
        Self {
            require_approval_for_done: true,
            require_review_before_done: false,
            comment_required_for_review: false,
            block_status_changes_with_pending_approval: false,
            only_lead_can_change_status: false,
            max_agents: 1,
        }
    }
}

/// A board as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    /// Identity.
    pub id: BoardId,
    /// Owning organisation.
    pub organization_id: OrganizationId,
    /// Display name.
    pub name: String,
    /// Short identifier, unique in the organisation.
    pub slug: Slug,
    /// What the board is for.
    pub description: String,
    /// The gateway its agents run on.
    pub gateway_id: GatewayId,
    /// Task rules.
    pub rules: BoardRules,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_words_joined_by_single_hyphens() {
        assert!(Slug::parse("ops-team-2").is_ok());
        for bad in ["", "Ops", "a--b", "-a", "a-", "a b", "a_b"] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn required_text_is_trimmed_and_bounded() {
        assert_eq!(required_text("  x ", "name", 5).unwrap(), "x");
        assert!(required_text(" ", "name", 5).is_err());
        assert!(required_text("toolong", "name", 5).is_err());
    }
}
