//! Enrollment tokens: board-scoped, admin-issued secrets that let a brand-new agent
//! announce itself on its first heartbeat. They expire, can be revoked and can be
//! limited in uses.

use crate::error::{FieldError, ValidationErrors};
use crate::ids::{BoardId, EnrollmentTokenId};
use crate::time::Timestamp;

/// Default lifetime of an enrollment token: one day.
pub const DEFAULT_EXPIRES_IN_SECONDS: i64 = 86_400;
/// Shortest allowed lifetime.
pub const MIN_EXPIRES_IN_SECONDS: i64 = 60;
/// Longest allowed lifetime: one year.
pub const MAX_EXPIRES_IN_SECONDS: i64 = 365 * 86_400;

/// An enrollment token as stored (its secret only as a digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// Identity.
    pub id: EnrollmentTokenId,
    /// The board new agents join.
    pub board_id: BoardId,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// How many agents it may create; `None` is unlimited.
    pub max_uses: Option<u32>,
    /// How many agents it has created.
    pub uses: u32,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Why an enrollment token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentRefusal {
    /// Past its expiry.
    Expired,
    /// Revoked by an admin.
    Revoked,
    /// Every allowed use is spent.
    UsedUp,
}

impl EnrollmentRefusal {
    /// A sentence for the 401 detail.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Expired => "enrollment token has expired",
            Self::Revoked => "enrollment token has been revoked",
            Self::UsedUp => "enrollment token has no uses left",
        }
    }
}

impl EnrollmentToken {
    /// Whether the token may still authenticate a retried first heartbeat (not expired,
    /// not revoked; a retry spends no use).
    pub fn check_alive(&self, now: Timestamp) -> Result<(), EnrollmentRefusal> {
        if self.revoked_at.is_some() {
            return Err(EnrollmentRefusal::Revoked);
        }
        if now >= self.expires_at {
            return Err(EnrollmentRefusal::Expired);
        }
        Ok(())
    }

    /// Whether the token may create one more agent.
    pub fn check_usable(&self, now: Timestamp) -> Result<(), EnrollmentRefusal> {
        self.check_alive(now)?;
        match self.max_uses {
            Some(max) if self.uses >= max => Err(EnrollmentRefusal::UsedUp),
            _ => Ok(()),
        }
    }
}

/// Validated issue parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollmentTerms {
    /// Lifetime in seconds.
    pub expires_in_seconds: i64,
    /// Use limit.
    pub max_uses: Option<u32>,
}

impl EnrollmentTerms {
    /// Validates `expires_in_seconds` and `max_uses`.
    pub fn parse(
        expires_in_seconds: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let expires = expires_in_seconds.unwrap_or(DEFAULT_EXPIRES_IN_SECONDS);
        if !(MIN_EXPIRES_IN_SECONDS..=MAX_EXPIRES_IN_SECONDS).contains(&expires) {
            errors.0.push(FieldError::body(
                "expires_in_seconds",
                format!(
                    "expires_in_seconds must be between {MIN_EXPIRES_IN_SECONDS} and {MAX_EXPIRES_IN_SECONDS}"
                ),
            ));
        }
        let max_uses = match max_uses {
            None => None,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => u32::try_from(n).ok(),
            Some(_) => {
                errors.0.push(FieldError::body(
                    "max_uses",
                    "max_uses must be at least 1 (omit it for unlimited uses)",
                ));
                None
            }
        };
        errors.into_result()?;
        Ok(Self {
            expires_in_seconds: expires,
            max_uses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(max_uses: Option<u32>, uses: u32) -> EnrollmentToken {
        EnrollmentToken {
            id: EnrollmentTokenId::new(),
            board_id: BoardId::new(),
            expires_at: Timestamp::from_millis(10_000),
            max_uses,
            uses,
            revoked_at: None,
            created_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn a_used_up_token_still_allows_a_retry_but_no_new_agent() {
        let t = token(Some(1), 1);
        let now = Timestamp::from_millis(5_000);
        assert_eq!(t.check_alive(now), Ok(()));
        assert_eq!(t.check_usable(now), Err(EnrollmentRefusal::UsedUp));
    }

    #[test]
    fn expiry_and_revocation_refuse_everything() {
        let mut t = token(None, 0);
        assert_eq!(
            t.check_alive(Timestamp::from_millis(10_000)),
            Err(EnrollmentRefusal::Expired)
        );
        t.revoked_at = Some(Timestamp::from_millis(1));
        assert_eq!(
            t.check_alive(Timestamp::from_millis(2)),
            Err(EnrollmentRefusal::Revoked)
        );
    }

    #[test]
    fn terms_are_bounded() {
        assert!(EnrollmentTerms::parse(Some(59), None).is_err());
        assert!(EnrollmentTerms::parse(None, Some(0)).is_err());
        assert_eq!(
            EnrollmentTerms::parse(None, None)
                .unwrap()
                .expires_in_seconds,
            DEFAULT_EXPIRES_IN_SECONDS
        );
    }
}
