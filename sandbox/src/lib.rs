//! Simulators of the two SaaS APIs the pipeline talks to (Fluent and commercetools), for the
//! demo, tests and benchmarks. They are written from the public API documentation and share no
//! types with the clients they test, so a client bug cannot hide behind a shared mistake.
