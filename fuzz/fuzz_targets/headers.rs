//! Shared by the signature targets: a verifier from the real configuration loader, and request
//! headers built from fuzz input (any of the signature headers, any number of times).

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use ingest::signature::{HEADERS as NAMES, Verifier};

/// A verifier configured by `pairs`, as `ingest` would build it.
pub fn verifier(pairs: &[(&str, &str)]) -> Verifier {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = common::config::Config::from_sources(&env, None).expect("a valid configuration");
    Verifier::from_config(&config.ingest).expect("usable keys")
}

/// Headers from `(name index, value)` pairs; values a header cannot hold are left out.
pub fn headers(pairs: &[(u8, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (index, value) in pairs {
        let name = NAMES[usize::from(*index) % NAMES.len()];
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
    map
}
