//! Token digests recently looked up in the database and not found: a bad token sent again
//! and again costs one query per [`FORGET_AFTER`], not one per request. Bounded: when full,
//! it starts over (a flood of distinct bad tokens then costs a query each, as without it).

use std::time::{Duration, Instant};

use dashmap::DashMap;
use mc_domain::token::TokenDigest;

/// How long a digest is known to be unknown. Short: a token minted by another replica is
/// on the feed within milliseconds, and looked up again after this at the latest.
const FORGET_AFTER: Duration = Duration::from_secs(2);

/// The most digests remembered.
const CAPACITY: usize = 10_000;

/// Recently unknown token digests, with when they were found unknown.
#[derive(Debug, Default)]
pub(super) struct UnknownTokens {
    seen: DashMap<TokenDigest, Instant>,
}

impl UnknownTokens {
    /// Whether `digest` was found unknown less than [`FORGET_AFTER`] ago.
    pub(super) fn contains(&self, digest: &TokenDigest) -> bool {
        self.seen
            .get(digest)
            .is_some_and(|at| at.elapsed() < FORGET_AFTER)
    }

    /// Remembers that `digest` is unknown.
    pub(super) fn insert(&self, digest: TokenDigest) {
        if self.seen.len() >= CAPACITY {
            self.seen.clear();
        }
        self.seen.insert(digest, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_remembered_and_the_memory_stays_bounded() {
        let unknown = UnknownTokens::default();
        let digest = TokenDigest::of("bad");
        assert!(!unknown.contains(&digest));
        unknown.insert(digest);
        assert!(unknown.contains(&digest));
        for i in 0..CAPACITY + 1 {
            unknown.insert(TokenDigest::of(&i.to_string()));
        }
        assert!(unknown.seen.len() <= CAPACITY);
    }
}
