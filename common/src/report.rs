//! Errors as people read them: the whole cause chain on one line, so a log or a `dlq-error`
//! says "connection refused" or "certificate unknown" and not only the top message.

use std::error::Error;

/// `error` and each of its sources, joined by `": "`; a source whose message the previous
/// one already ends with is left out (some errors repeat their cause in their own message).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.is_empty() && !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("fluent could not be reached")]
    struct Top(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let refused =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            chain(&Top(refused())),
            "fluent could not be reached: connection refused"
        );
        assert_eq!(chain(&Repeats(refused())), "wrapped: connection refused");
    }
}
