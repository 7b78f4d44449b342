//! End-to-end tests against the real brokers `./scripts/test` starts (Kafka-protocol broker
//! `tansu`, `nats-server -js`). One binary, one module per area.

mod bus_contract;
mod bus_faults;
mod deploy;
mod dlq_kill;
mod dry_run;
mod engine_faults;
mod gateway;
mod gateway_traces;
mod kafka_pause;
mod kafka_smoke;
mod kafka_tls;
mod lost_assignment;
mod nats_ownership;
mod nats_processes;
mod nats_smoke;
mod operations;
mod otlp_tls;
mod pipeline;
mod processor_process;
mod rebalance;
mod structure;
mod tls_proxy;
