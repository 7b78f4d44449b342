//! Webhook authentication: Fluent's RSA signatures and Standard Webhooks HMAC.
//!
//! Keys are parsed once at start-up; verification is one RSA verify per configured key (a
//! few during rotation) or one HMAC per secret, over the exact raw body bytes.
//!
//! Everything here reads input no signature has vouched for yet, so nothing may panic on it:
//! timestamps are compared as integers (no clock arithmetic on what the sender wrote), and a
//! header that is given twice, or two aliases that disagree, make the request ambiguous
//! rather than letting header order decide.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY};
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::config::IngestConfig;
use hmac::{Hmac, Mac as _};
use secrecy::ExposeSecret as _;
use sha2::Sha256;

/// Header names Fluent's SHA512withRSA signature may arrive under (proxies rename headers).
const RSA_HEADERS: &[&str] = &["fluent-signature", "x-fluent-signature", "fluent_signature"];
/// Fluent's legacy MD5withRSA signature, accepted only when explicitly enabled.
const LEGACY_HEADER: &str = "flex.signature";
/// Standard Webhooks' headers.
const HMAC_SIGNATURE: &str = "webhook-signature";
pub(crate) const HMAC_ID: &str = "webhook-id";
const HMAC_TIMESTAMP: &str = "webhook-timestamp";

/// Every request header the verifier reads (for tests and fuzzing that try them all).
pub const HEADERS: &[&str] = &[
    RSA_HEADERS[0],
    RSA_HEADERS[1],
    RSA_HEADERS[2],
    LEGACY_HEADER,
    HMAC_SIGNATURE,
    HMAC_ID,
    HMAC_TIMESTAMP,
];

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
    /// `webhook-id` or `webhook-timestamp` is missing, not a number of seconds, or too far
    /// from now.
    #[error(
        "webhook-id or webhook-timestamp is missing, or the timestamp is not whole seconds \
         since 1970 within the tolerance"
    )]
    Timestamp,
    /// A signature header (or `webhook-id`, `webhook-timestamp`) is given more than once, or
    /// two of its aliases disagree: which one counts would depend on header order.
    #[error("{0} is given more than once")]
    Repeated(&'static str),
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
    /// One keyed HMAC-SHA256 per secret, cloned for each verification.
    secrets: Vec<Hmac<Sha256>>,
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
        let secrets: Vec<Hmac<Sha256>> = config
            .hmac_secrets
            .iter()
            .map(|secret| {
                Hmac::new_from_slice(secret.expose_secret())
                    .expect("HMAC takes a key of any length")
            })
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
            && let Some(signature) = one_of(headers, RSA_HEADERS)?
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
            && let Some(signature) = one_of(headers, &[LEGACY_HEADER])?
        {
            return self.verify_legacy(signature.as_bytes(), body);
        }
        if !self.secrets.is_empty()
            && let Some(signatures) = one_of(headers, &[HMAC_SIGNATURE])?
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
        let id = one_of(headers, &[HMAC_ID])?.ok_or(SignatureError::Timestamp)?;
        let timestamp = one_of(headers, &[HMAC_TIMESTAMP])?.ok_or(SignatureError::Timestamp)?;
        let seconds = parse_timestamp(timestamp.as_bytes()).ok_or(SignatureError::Timestamp)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if now.abs_diff(seconds) > self.tolerance.as_secs() {
            return Err(SignatureError::Timestamp);
        }
        // `id.timestamp.body`, fed in parts: no copy of the body.
        let macs: Vec<Hmac<Sha256>> = self
            .secrets
            .iter()
            .map(|key| {
                let mut mac = key.clone();
                for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
                    mac.update(part);
                }
                mac
            })
            .collect();
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
            // verify_slice compares in constant time.
            if macs
                .iter()
                .any(|mac| mac.clone().verify_slice(&signature).is_ok())
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

/// The value of the one header among `names` (aliases of one header) the request carries.
/// `None` when it carries none; refused when one name is given twice or two aliases disagree.
fn one_of<'a>(
    headers: &'a HeaderMap,
    names: &[&'static str],
) -> Result<Option<&'a HeaderValue>, SignatureError> {
    let mut found: Option<&HeaderValue> = None;
    for name in names {
        let mut values = headers.get_all(*name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() || found.is_some_and(|other| other != value) {
            return Err(SignatureError::Repeated(names[0]));
        }
        found = Some(value);
    }
    Ok(found)
}

/// Whole seconds since 1970, as Standard Webhooks writes them: ASCII digits only (no sign, no
/// fraction, no surrounding space), at most 20 of them, within `u64`.
fn parse_timestamp(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A verifier with an HMAC secret and (when `rsa`) an RSA key with the legacy scheme on.
    fn verifier(rsa: bool) -> Verifier {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        let mut env: std::collections::HashMap<String, String> = [(
            "WEBHOOK_HMAC_SECRETS".to_owned(),
            "whsec_c2VjcmV0LWZvci1wcm9wZXJ0eS10ZXN0cw==".to_owned(),
        )]
        .into();
        if rsa {
            static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let key = KEY.get_or_init(|| {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .expect("an RSA key");
                STANDARD.encode(pair.public_key().as_der().expect("SPKI").as_ref())
            });
            env.insert("FLUENT_WEBHOOK_PUBLIC_KEYS".into(), key.clone());
            env.insert("INGEST_LEGACY_MD5_SIGNATURE".into(), "true".into());
        }
        let config = common::config::Config::from_sources(&env, None).expect("configuration");
        Verifier::from_config(&config.ingest).expect("usable keys")
    }

    /// Every header the verifier reads, any number of times, with any bytes a header can hold.
    fn any_headers() -> impl Strategy<Value = HeaderMap> {
        let names = proptest::sample::select(HEADERS);
        let value = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "(v1,[A-Za-z0-9+/=]{0,60} ?){0,3}".prop_map(String::into_bytes),
            "[0-9]{0,25}".prop_map(String::into_bytes),
            // Beyond what a clock can add: `UNIX_EPOCH + Duration` of it panicked once.
            Just(b"18446744073709551615".to_vec()),
        ];
        proptest::collection::vec((names, value), 0..6).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(name, value);
                }
            }
            map
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The stand-in for `scripts/fuzz` in CI: whatever the signature headers hold, the
        /// verifier answers (no panic) and never calls an unsigned request verified.
        #[test]
        fn any_signature_headers_are_answered_without_a_panic_and_never_verified(
            headers in any_headers(),
            body in proptest::collection::vec(any::<u8>(), 0..128),
            rsa in any::<bool>(),
        ) {
            let verifier = verifier(rsa);
            prop_assert!(verifier.verify(&headers, &body, SystemTime::now()).is_err());
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_timestamp_is_digits_within_u64_and_nothing_else() {
        assert_eq!(parse_timestamp(b"1700000000"), Some(1_700_000_000));
        assert_eq!(parse_timestamp(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"99999999999999999999999",
            b"-1",
            b"+1",
            b"1.5",
            b" 1",
            b"1e9",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_header_given_twice_or_aliases_that_disagree_are_refused() {
        let names = RSA_HEADERS;
        assert!(one_of(&headers(&[]), names).unwrap().is_none());
        assert_eq!(
            one_of(&headers(&[("x-fluent-signature", "a")]), names)
                .unwrap()
                .unwrap(),
            "a"
        );
        // Aliases agreeing (a proxy copied the header) are one signature.
        assert!(
            one_of(
                &headers(&[("fluent-signature", "a"), ("x-fluent-signature", "a")]),
                names
            )
            .is_ok()
        );
        for pairs in [
            &[("fluent-signature", "a"), ("fluent-signature", "a")][..],
            &[("fluent-signature", "a"), ("fluent-signature", "b")],
            &[("fluent-signature", "a"), ("fluent_signature", "b")],
        ] {
            assert!(
                matches!(
                    one_of(&headers(pairs), names),
                    Err(SignatureError::Repeated("fluent-signature"))
                ),
                "{pairs:?}"
            );
        }
    }
}
