//! Webhook authentication: Fluent's RSA signatures and Standard Webhooks HMAC.
//!
//! Keys are parsed once at start-up; verification is one RSA verify per configured key (a
//! few during rotation) or one HMAC per secret, over the exact raw body bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::config::IngestConfig;
use secrecy::ExposeSecret as _;

/// Header names Fluent's SHA512withRSA signature may arrive under (proxies rename headers).
const RSA_HEADERS: &[&str] = &["fluent-signature", "x-fluent-signature", "fluent_signature"];
/// Fluent's legacy MD5withRSA signature, accepted only when explicitly enabled.
const LEGACY_HEADER: &str = "flex.signature";

/// Why a webhook was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No signature header this gateway is configured for.
    #[error("no signature: send fluent-signature (RSA) or webhook-signature (HMAC)")]
    Missing,
    /// The signature header is not what the scheme prescribes (base64, `v1,` entries).
    #[error("the signature header is malformed")]
    Malformed,
    /// The signature matches no configured key or secret.
    #[error("the signature does not match any configured key")]
    Mismatch,
    /// `webhook-id` or `webhook-timestamp` is missing, or the timestamp is too far from now.
    #[error(
        "webhook-id or webhook-timestamp is missing, or the timestamp is outside the tolerance"
    )]
    Timestamp,
}

/// A configured key that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A public key is not an RSA SubjectPublicKeyInfo of 1024 to 8192 bits.
    #[error("FLUENT_WEBHOOK_PUBLIC_KEYS: key {index} is not an RSA public key of 1024-8192 bits")]
    Rsa {
        /// Its position in the list, from 1.
        index: usize,
    },
    /// Neither keys nor secrets, and unsigned webhooks not explicitly allowed.
    #[error(
        "no webhook authentication: set FLUENT_WEBHOOK_PUBLIC_KEYS or WEBHOOK_HMAC_SECRETS \
         (or INGEST_INSECURE_NO_SIGNATURE=true for local experiments)"
    )]
    NoneConfigured,
}

/// How a webhook was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Fluent's RSA signature.
    Rsa,
    /// Fluent's legacy MD5withRSA signature (`flex.signature`).
    LegacyMd5,
    /// A Standard Webhooks HMAC signature.
    Hmac,
    /// Not at all: `INGEST_INSECURE_NO_SIGNATURE` is on and nothing is configured.
    Unsigned,
}

/// Checks webhook signatures against the configured keys and secrets.
pub struct Verifier {
    keys: Vec<ParsedPublicKey>,
    /// The same keys for the legacy MD5 scheme (aws-lc-rs has no MD5), when enabled.
    legacy_keys: Vec<rsa::RsaPublicKey>,
    secrets: Vec<hmac::Key>,
    tolerance: Duration,
    insecure: bool,
}

impl Verifier {
    /// Parses the configured keys once.
    pub fn from_config(config: &IngestConfig) -> Result<Self, KeyError> {
        let keys = config
            .public_keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                // The legacy algorithm accepts 1024-bit keys too: Fluent's test environments
                // still sign with them; production keys are 2048 bits.
                ParsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY, key.der())
                    .map_err(|_| KeyError::Rsa { index: index + 1 })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let legacy_keys = if config.legacy_md5_signature {
            use rsa::pkcs8::DecodePublicKey as _;
            config
                .public_keys
                .iter()
                .enumerate()
                .map(|(index, key)| {
                    rsa::RsaPublicKey::from_public_key_der(key.der())
                        .map_err(|_| KeyError::Rsa { index: index + 1 })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let secrets: Vec<hmac::Key> = config
            .hmac_secrets
            .iter()
            .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret()))
            .collect();
        let insecure = keys.is_empty() && secrets.is_empty();
        if insecure && !config.insecure_no_signature {
            return Err(KeyError::NoneConfigured);
        }
        Ok(Self {
            keys,
            legacy_keys,
            secrets,
            tolerance: config.hmac_tolerance,
            insecure,
        })
    }

    /// True when webhooks are accepted without any signature.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Authenticates `body` by the signature in `headers`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, SignatureError> {
        if self.insecure {
            return Ok(Verified::Unsigned);
        }
        if !self.keys.is_empty()
            && let Some(signature) = RSA_HEADERS.iter().find_map(|name| headers.get(*name))
        {
            let signature = STANDARD
                .decode(signature.as_bytes().trim_ascii())
                .map_err(|_| SignatureError::Malformed)?;
            return self
                .keys
                .iter()
                .any(|key| key.verify_sig(body, &signature).is_ok())
                .then_some(Verified::Rsa)
                .ok_or(SignatureError::Mismatch);
        }
        if !self.legacy_keys.is_empty()
            && let Some(signature) = headers.get(LEGACY_HEADER)
        {
            return self.verify_legacy(signature.as_bytes(), body);
        }
        if !self.secrets.is_empty()
            && let Some(signatures) = headers.get("webhook-signature")
        {
            return self.verify_hmac(headers, signatures.as_bytes(), body, now);
        }
        Err(SignatureError::Missing)
    }

    fn verify_legacy(&self, signature: &[u8], body: &[u8]) -> Result<Verified, SignatureError> {
        use md5::Digest as _;
        let signature = STANDARD
            .decode(signature.trim_ascii())
            .map_err(|_| SignatureError::Malformed)?;
        let digest = md5::Md5::digest(body);
        self.legacy_keys
            .iter()
            .any(|key| {
                key.verify(rsa::Pkcs1v15Sign::new::<md5::Md5>(), &digest, &signature)
                    .is_ok()
            })
            .then_some(Verified::LegacyMd5)
            .ok_or(SignatureError::Mismatch)
    }

    fn verify_hmac(
        &self,
        headers: &HeaderMap,
        signatures: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, SignatureError> {
        let id = headers
            .get("webhook-id")
            .ok_or(SignatureError::Timestamp)?
            .as_bytes();
        let timestamp = headers
            .get("webhook-timestamp")
            .ok_or(SignatureError::Timestamp)?;
        let seconds: u64 = std::str::from_utf8(timestamp.as_bytes())
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(SignatureError::Timestamp)?;
        let sent = UNIX_EPOCH + Duration::from_secs(seconds);
        let skew = now
            .duration_since(sent)
            .unwrap_or_else(|early| early.duration());
        if skew > self.tolerance {
            return Err(SignatureError::Timestamp);
        }
        let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
        signed.extend_from_slice(id);
        signed.push(b'.');
        signed.extend_from_slice(timestamp.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        let mut any_v1 = false;
        for entry in signatures
            .split(|byte| *byte == b' ')
            .filter(|entry| !entry.is_empty())
        {
            let Some(encoded) = entry.strip_prefix(b"v1,") else {
                continue;
            };
            any_v1 = true;
            let Ok(signature) = STANDARD.decode(encoded) else {
                continue;
            };
            // hmac::verify compares in constant time.
            if self
                .secrets
                .iter()
                .any(|key| hmac::verify(key, &signed, &signature).is_ok())
            {
                return Ok(Verified::Hmac);
            }
        }
        Err(if any_v1 {
            SignatureError::Mismatch
        } else {
            SignatureError::Malformed
        })
    }
}
