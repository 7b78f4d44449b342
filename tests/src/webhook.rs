//! Fluent webhooks as the end-to-end tests and the soak send them: an order-status event body
//! and the Standard Webhooks headers that sign it with a shared secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub use sandbox::seed::order_status_event;

/// The `WEBHOOK_HMAC_SECRETS` value for `secret`.
pub fn hmac_secret_setting(secret: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(secret))
}

/// Standard Webhooks headers signing `body` as message `id`, now, with `secret`.
pub fn signed(secret: &[u8], id: &str, body: &str) -> Vec<(&'static str, String)> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let signature = aws_lc_rs::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            format!("v1,{}", STANDARD.encode(signature.as_ref())),
        ),
    ]
}
