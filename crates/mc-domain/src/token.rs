//! Bearer secrets: agent tokens, enrollment tokens and their digests.
//!
//! Tokens are 256 bits from the OS random source, so a single SHA-256 digest is enough
//! to store them safely (a slow KDF protects guessable passwords, not random keys) and
//! lets authentication be one indexed lookup instead of a scan over every agent.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The prefix that marks an enrollment token, so it is never confused with an agent token.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "mce_";

/// A plaintext secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a plaintext secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call only where the secret must leave the process.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which the secret is stored.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }

    /// Constant-time equality with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The SHA-256 digest of a token: what is stored and indexed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a presented token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// From stored bytes; `None` when the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

fn random_256_bits() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh agent token: 32 random bytes, URL-safe base64 without padding (43 characters).
pub fn generate_agent_token() -> Secret {
    Secret(random_256_bits())
}

/// A fresh enrollment token: the `mce_` prefix and 32 random bytes.
pub fn generate_enrollment_token() -> Secret {
    Secret(format!("{ENROLLMENT_TOKEN_PREFIX}{}", random_256_bits()))
}

/// A fresh admin token (the same strength as an agent token, 64 characters with a prefix).
pub fn generate_admin_token() -> Secret {
    Secret(format!(
        "mca_{}{}",
        random_256_bits(),
        &random_256_bits()[..17]
    ))
}

/// Whether a presented token is shaped like an enrollment token.
pub fn is_enrollment_token(token: &str) -> bool {
    token.starts_with(ENROLLMENT_TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_tokens_are_43_url_safe_characters_and_unique() {
        let a = generate_agent_token();
        let b = generate_agent_token();
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a, b);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let token = generate_agent_token();
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn enrollment_tokens_are_recognisable_and_agent_tokens_are_not() {
        assert!(is_enrollment_token(generate_enrollment_token().expose()));
        assert!(!is_enrollment_token(generate_agent_token().expose()));
    }

    #[test]
    fn admin_tokens_are_at_least_fifty_characters() {
        assert!(generate_admin_token().expose().len() >= 50);
    }

    #[test]
    fn digest_is_stable_for_the_same_token() {
        assert_eq!(TokenDigest::of("abc"), TokenDigest::of("abc"));
        assert!(Secret::new("abc").matches("abc"));
        assert!(!Secret::new("abc").matches("abd"));
    }
}
