//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`, repeated
//! or not) against an HMAC-mode verifier: any input, no panic.
#![no_main]

use std::sync::LazyLock;
use std::time::SystemTime;

use ingest::signature::Verifier;
use libfuzzer_sys::fuzz_target;

#[path = "headers.rs"]
mod headers;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    headers::verifier(&[(
        "WEBHOOK_HMAC_SECRETS",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )])
});

fuzz_target!(|input: (Vec<(u8, Vec<u8>)>, Vec<u8>)| {
    let (pairs, body) = input;
    let _ = VERIFIER.verify(&headers::headers(&pairs), &body, SystemTime::now());
});
