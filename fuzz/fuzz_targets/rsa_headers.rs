//! Fluent's signature headers (`fluent-signature` and its aliases, `flex.signature`, repeated
//! or not) against an RSA verifier with the legacy scheme on: any input, no panic.
#![no_main]

use std::sync::LazyLock;
use std::time::SystemTime;

use ingest::signature::Verifier;
use libfuzzer_sys::fuzz_target;

#[path = "headers.rs"]
mod headers;

/// A fresh RSA-2048 public key (SubjectPublicKeyInfo, base64): what it verifies against does
/// not matter, only that every path through the header parsing is reached.
fn public_key() -> String {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("an RSA key");
    let der = pair.public_key().as_der().expect("SPKI encoding");
    base64::engine::general_purpose::STANDARD.encode(der.as_ref())
}

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    headers::verifier(&[
        ("FLUENT_WEBHOOK_PUBLIC_KEYS", &public_key()),
        ("INGEST_LEGACY_MD5_SIGNATURE", "true"),
    ])
});

fuzz_target!(|input: (Vec<(u8, Vec<u8>)>, Vec<u8>)| {
    let (pairs, body) = input;
    let _ = VERIFIER.verify(&headers::headers(&pairs), &body, SystemTime::now());
});
