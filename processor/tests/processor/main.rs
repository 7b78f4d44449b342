//! The processor application's integration tests: the engine and its routes over real HTTP.
//! The engine's own tests live in `processor-engine`, the handler's in `order-status`.

mod app;
