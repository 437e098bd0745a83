//! Dashboard sessions and CSRF protection, stateless.
//!
//! A session is a signed cookie: `<expires_ms>.<nonce>.<mac>`, where the MAC is
//! HMAC-SHA256 under a key derived from the admin token. Nothing is stored server-side,
//! so sessions survive restarts and work across replicas that share the admin token;
//! changing the admin token signs everyone out. The CSRF token of a session is an HMAC
//! of its nonce (the synchroniser-token pattern without server state); the sign-in form
//! gets its own token bound to a short-lived pre-session cookie.

use std::time::Duration;

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "mc_session";
/// The pre-session cookie that binds the sign-in form's CSRF token.
pub const SIGN_IN_COOKIE: &str = "mc_sign_in";
/// How long a session lasts after signing in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The key that signs sessions and CSRF tokens, derived from the admin token.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A valid, unexpired session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    nonce: String,
    expires_at: Timestamp,
    csrf: String,
}

impl Session {
    /// The CSRF token every form of this session must carry.
    pub fn csrf_token(&self) -> &str {
        &self.csrf
    }

    /// When the session ends.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl SessionKey {
    /// The key for an admin token.
    pub fn for_admin_token(admin_token: &Secret) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"mission-control dashboard session key v1\0");
        hasher.update(admin_token.expose().as_bytes());
        Self(hasher.finalize().into())
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Starts a session at `now`; returns it and its cookie value.
    pub fn start(&self, now: Timestamp) -> (Session, String) {
        let nonce = random_nonce();
        let lifetime_ms = i64::try_from(SESSION_LIFETIME.as_millis()).unwrap_or(i64::MAX);
        let expires_at = now.plus_millis(lifetime_ms);
        let expires = expires_at.as_millis().to_string();
        let mac = self.mac(&["session", &expires, &nonce]);
        let value = format!("{expires}.{nonce}.{mac}");
        (self.session(nonce, expires_at), value)
    }

    fn session(&self, nonce: String, expires_at: Timestamp) -> Session {
        let csrf = self.mac(&["csrf", &nonce]);
        Session {
            nonce,
            expires_at,
            csrf,
        }
    }

    /// The session a cookie value stands for, if it is authentic and unexpired at `now`.
    pub fn verify(&self, value: &str, now: Timestamp) -> Option<Session> {
        let mut parts = value.splitn(3, '.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let expected = self.mac(&["session", expires, nonce]);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let expires_at = Timestamp::from_millis(expires.parse().ok()?);
        (expires_at > now).then(|| self.session(nonce.to_owned(), expires_at))
    }

    /// A fresh pre-session nonce for the sign-in form and its CSRF token.
    pub fn sign_in_challenge(&self) -> (String, String) {
        let nonce = random_nonce();
        let token = self.mac(&["sign-in", &nonce]);
        (nonce, token)
    }

    /// Whether `token` is the sign-in CSRF token for the pre-session `nonce`.
    pub fn sign_in_token_matches(&self, nonce: &str, token: &str) -> bool {
        let expected = self.mac(&["sign-in", nonce]);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The value of cookie `name` in the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// The valid session carried by the request's cookie, if any.
pub fn session_from_headers(admin_token: &Secret, headers: &HeaderMap) -> Option<Session> {
    let value = cookie(headers, SESSION_COOKIE)?;
    SessionKey::for_admin_token(admin_token).verify(value, Timestamp::now())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, path `/`; `Secure` when served over
/// HTTPS; `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Adds a `Set-Cookie` header.
pub fn append_cookie(headers: &mut HeaderMap, value: HeaderValue) {
    headers.append(SET_COOKIE, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::for_admin_token(&Secret::new("a".repeat(60)))
    }

    #[test]
    fn a_started_session_verifies_until_it_expires() {
        let now = Timestamp::from_millis(1_000_000);
        let (session, cookie) = key().start(now);
        assert_eq!(key().verify(&cookie, now), Some(session.clone()));
        assert_eq!(key().verify(&cookie, session.expires_at()), None);
    }

    #[test]
    fn a_tampered_or_foreign_cookie_is_refused() {
        let now = Timestamp::from_millis(1_000_000);
        let (_, cookie) = key().start(now);
        let later = cookie.replacen('1', "9", 1);
        assert_eq!(key().verify(&later, now), None);
        let other = SessionKey::for_admin_token(&Secret::new("b".repeat(60)));
        assert_eq!(other.verify(&cookie, now), None);
        assert_eq!(key().verify("garbage", now), None);
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let now = Timestamp::from_millis(1_000_000);
        let (first, _) = key().start(now);
        let (second, _) = key().start(now);
        assert!(first.csrf_matches(first.csrf_token()));
        assert!(!first.csrf_matches(second.csrf_token()));
        assert!(!first.csrf_matches(""));
    }

    #[test]
    fn sign_in_tokens_are_bound_to_their_nonce() {
        let (nonce, token) = key().sign_in_challenge();
        assert!(key().sign_in_token_matches(&nonce, &token));
        let (other_nonce, _) = key().sign_in_challenge();
        assert!(!key().sign_in_token_matches(&other_nonce, &token));
    }

    #[test]
    fn cookies_are_found_among_several() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; mc_session=x.y.z; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("x.y.z"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
