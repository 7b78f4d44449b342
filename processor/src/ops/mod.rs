//! The operations subcommands of `processor`: `check` (is this environment ready?),
//! `dlq list` and `dlq replay` (the dead letters), and `resync` (one order from Fluent's
//! current status). Each writes what it found to the writer it is given and returns what it
//! did, so the binary decides the exit code.

pub mod check;
pub mod dlq;
pub mod resync;

use common::bus::BusError;
use order_status::ResyncError;
use order_status::clients::api::SetupError;

/// Why an operations command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The bus failed.
    #[error("the bus failed")]
    Bus(#[from] BusError),
    /// The API clients could not be set up.
    #[error("cannot set up the API clients")]
    Setup(#[from] SetupError),
    /// The resync did not set the order.
    #[error("the resync did not set the order")]
    Resync(#[from] ResyncError),
    /// Writing the report failed.
    #[error("cannot write the report")]
    Write(#[from] std::io::Error),
}

impl OpsError {
    /// Whether running the command again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Bus(error) => error.is_retryable(),
            Self::Resync(error) => error.is_retryable(),
            Self::Setup(_) | Self::Write(_) => false,
        }
    }
}
