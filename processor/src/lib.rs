//! Stage 2, the consumer engine: routes each bus record by message name to a handler, keeps
//! per-order ordering while processing many orders at once, and commits offsets only after the
//! handler's work (the commercetools update) succeeded.
//!
//! The engine is built on [`common`]'s event model and configuration.

pub use common::config::ProcessorConfig;
