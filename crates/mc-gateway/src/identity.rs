//! The Ed25519 device identity this server presents to every gateway.
//!
//! Created once and kept in a file in the data directory (mode 0600), so a gateway that
//! paired this device keeps recognising it across restarts. The file format is the one the
//! OpenClaw tooling uses (`version`, `deviceId`, SPKI/PKCS#8 PEM keys, `createdAtMs`), so an
//! operator can inspect it with the usual tools.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file name of the identity inside the directory given to [`DeviceIdentity::load_or_create`].
pub const IDENTITY_FILE_NAME: &str = "gateway-device.json";

/// Why the identity file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory or file could not be created or written.
    #[error("cannot write the device identity {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A key could not be encoded as PEM (should not happen for a valid key).
    #[error("cannot encode the device key: {0}")]
    Encode(String),
}

/// An Ed25519 key pair and the device id derived from it.
#[derive(Clone)]
pub struct DeviceIdentity {
    signing_key: SigningKey,
    device_id: String,
    created_at_ms: i64,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityFile {
    version: u32,
    device_id: String,
    public_key_pem: String,
    private_key_pem: String,
    created_at_ms: i64,
}

/// Lowercase hex SHA-256 of the 32 raw public-key bytes: what the gateway recomputes.
pub fn device_id_of(public_key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(public_key.as_bytes()))
}

/// Unpadded base64url, the encoding of keys and signatures on the wire.
pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The fields of the connect request that the device signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedConnect<'a> {
    /// `client.id`.
    pub client_id: &'a str,
    /// `client.mode`.
    pub client_mode: &'a str,
    /// `role`.
    pub role: &'a str,
    /// `scopes`, in the order sent.
    pub scopes: &'a [&'a str],
    /// `device.signedAt`, epoch milliseconds.
    pub signed_at_ms: i64,
    /// The gateway token sent in `auth.token`, or empty.
    pub token: &'a str,
    /// The `connect.challenge` nonce.
    pub nonce: &'a str,
}

impl SignedConnect<'_> {
    /// The `v2|deviceId|clientId|clientMode|role|scopes|signedAtMs|token|nonce` string.
    pub fn payload(&self, device_id: &str) -> String {
        format!(
            "v2|{device_id}|{}|{}|{}|{}|{}|{}|{}",
            self.client_id,
            self.client_mode,
            self.role,
            self.scopes.join(","),
            self.signed_at_ms,
            self.token,
            self.nonce
        )
    }
}

/// The `device` block of the connect params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProof {
    /// The device id.
    pub id: String,
    /// The raw public key, base64url.
    pub public_key: String,
    /// The signature over the payload, base64url.
    pub signature: String,
    /// When the payload was signed, epoch milliseconds.
    pub signed_at: i64,
    /// The challenge nonce.
    pub nonce: String,
}

impl DeviceIdentity {
    /// A new random identity (not persisted).
    pub fn generate() -> Self {
        let mut secret = [0_u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self::from_signing_key(
            SigningKey::from_bytes(&secret),
            mc_domain::Timestamp::now().as_millis(),
        )
    }

    fn from_signing_key(signing_key: SigningKey, created_at_ms: i64) -> Self {
        let device_id = device_id_of(&signing_key.verifying_key());
        Self {
            signing_key,
            device_id,
            created_at_ms,
        }
    }

    /// Loads the identity from `dir/gateway-device.json`, creating the directory and a new
    /// identity when the file is missing or unreadable. A file whose stored id does not match
    /// its key is rewritten with the derived id.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(IDENTITY_FILE_NAME);
        if let Some((identity, stored_id)) = Self::read(&path) {
            if stored_id != identity.device_id {
                identity.write(&path)?;
            }
            return Ok(identity);
        }
        if path.exists() {
            tracing::warn!(path = %path.display(), "device identity unreadable; creating a new one");
        }
        let identity = Self::generate();
        identity.write(&path)?;
        Ok(identity)
    }

    fn read(path: &Path) -> Option<(Self, String)> {
        let text = fs::read_to_string(path).ok()?;
        let file: IdentityFile = serde_json::from_str(&text).ok()?;
        let key = SigningKey::from_pkcs8_pem(&file.private_key_pem).ok()?;
        Some((
            Self::from_signing_key(key, file.created_at_ms),
            file.device_id,
        ))
    }

    fn write(&self, path: &Path) -> Result<(), IdentityError> {
        let write_error = |source| IdentityError::Write {
            path: path.to_owned(),
            source,
        };
        let file = IdentityFile {
            version: 1,
            device_id: self.device_id.clone(),
            public_key_pem: self
                .signing_key
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| IdentityError::Encode(e.to_string()))?,
            private_key_pem: self
                .signing_key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| IdentityError::Encode(e.to_string()))?
                .to_string(),
            created_at_ms: self.created_at_ms,
        };
        let json = serde_json::to_string_pretty(&file).expect("identity file serialises");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(write_error)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&tmp).map_err(write_error)?;
        out.write_all(json.as_bytes()).map_err(write_error)?;
        out.sync_all().map_err(write_error)?;
        fs::rename(&tmp, path).map_err(write_error)
    }

    /// The device id: lowercase hex SHA-256 of the raw public key.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The raw public key, base64url without padding.
    pub fn public_key_base64url(&self) -> String {
        base64url(self.signing_key.verifying_key().as_bytes())
    }

    /// Signs the connect fields and returns the `device` block to send.
    pub fn prove(&self, connect: &SignedConnect<'_>) -> DeviceProof {
        let payload = connect.payload(&self.device_id);
        let signature = self.signing_key.sign(payload.as_bytes());
        DeviceProof {
            id: self.device_id.clone(),
            public_key: self.public_key_base64url(),
            signature: base64url(&signature.to_bytes()),
            signed_at: connect.signed_at_ms,
            nonce: connect.nonce.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    fn connect_fields() -> SignedConnect<'static> {
        SignedConnect {
            client_id: "gateway-client",
            client_mode: "backend",
            role: "operator",
            scopes: &["operator.read", "operator.admin"],
            signed_at_ms: 123,
            token: "token",
            nonce: "nonce-xyz",
        }
    }

    #[test]
    fn payload_is_the_v2_pipe_joined_string() {
        assert_eq!(
            connect_fields().payload("dev"),
            "v2|dev|gateway-client|backend|operator|operator.read,operator.admin|123|token|nonce-xyz"
        );
    }

    #[test]
    fn device_id_is_hex_sha256_of_the_raw_public_key() {
        let identity = DeviceIdentity::generate();
        let raw = URL_SAFE_NO_PAD
            .decode(identity.public_key_base64url())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(identity.device_id(), hex::encode(Sha256::digest(&raw)));
        assert_eq!(identity.device_id().len(), 64);
    }

    #[test]
    fn proof_signature_verifies_over_the_payload() {
        let identity = DeviceIdentity::generate();
        let proof = identity.prove(&connect_fields());
        assert!(!proof.signature.contains('=') && !proof.public_key.contains('='));
        let key_bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&proof.public_key)
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
        let sig_bytes: [u8; 64] = URL_SAFE_NO_PAD
            .decode(&proof.signature)
            .unwrap()
            .try_into()
            .unwrap();
        let payload = connect_fields().payload(identity.device_id());
        key.verify(payload.as_bytes(), &Signature::from_bytes(&sig_bytes))
            .unwrap();
    }

    #[test]
    fn identity_is_created_once_and_reloaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceIdentity::load_or_create(&dir.path().join("data")).unwrap();
        let second = DeviceIdentity::load_or_create(&dir.path().join("data")).unwrap();
        assert_eq!(first.device_id(), second.device_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("data").join(IDENTITY_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_corrupt_identity_file_is_replaced_by_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE_NAME), "not json").unwrap();
        let identity = DeviceIdentity::load_or_create(dir.path()).unwrap();
        let again = DeviceIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(identity.device_id(), again.device_id());
    }

    #[test]
    fn a_stored_id_that_does_not_match_the_key_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let identity = DeviceIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE_NAME);
        let mut file: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        file["deviceId"] = "wrong".into();
        fs::write(&path, file.to_string()).unwrap();
        let reloaded = DeviceIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.device_id(), identity.device_id());
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains(identity.device_id())
        );
    }
}
