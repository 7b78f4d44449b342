//! The engine's integration tests on the in-memory bus: scheduling (order per key, retries,
//! the DLQ rule, unknown names) and limits (memory bound, batches, slow and failing handlers).

mod limits;
mod scheduling;
