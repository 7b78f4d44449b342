//! The processor's integration tests: the engine on the in-memory bus, the application over
//! real HTTP, and the GraphQL documents against the real API schemas.

mod app;
mod documents;
mod engine;
mod engine_limits;
mod order_status;
