//! The demo: the whole pipeline in one process against the sandbox APIs, driven through a
//! realistic story (orders walking Fluent's statuses, some cancelled, duplicate webhooks,
//! failing APIs, version conflicts), then checked: each order must end in the commercetools
//! states Fluent's mapping settings give its statuses.
//!
//! - `scenario`: the story, decided from the seed, and the expected states (pure).
//! - `stack`: the sandbox, the gateway and the processor, started and stopped.
//! - `fluent`: Fluent's side: orders, signed webhooks, deliveries.
//! - `report`: the table and the summary; `serve`: what `--serve` prints.

pub mod fluent;
pub mod report;
pub mod scenario;
pub mod serve;
pub mod stack;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sandbox::{Endpoint, Fault, FaultBody};
use serde_json::Value;

use crate::fluent::{Sent, Signer};
use crate::report::{OrderResult, Summary};
use crate::scenario::{Expectation, OrderPlan, States};
use crate::stack::{Setup, Stack};

/// Share of Fluent and commercetools GraphQL calls that fail (in every shape the real APIs and
/// their proxies fail in) when faults are on.
const FAULT_RATE: f64 = 0.08;

/// Why the demo could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configuration the demo builds (from the environment) is invalid.
    #[error(transparent)]
    Config(#[from] common::config::ConfigError),
    /// The gateway did not start.
    #[error("the gateway did not start")]
    Gateway(#[from] ingest::StartError),
    /// The processor did not start.
    #[error("the processor did not start")]
    Processor(#[from] processor::StartError),
    /// The order-status handler could not be set up.
    #[error("the order-status handler could not be set up")]
    Handler(#[from] order_status::clients::api::SetupError),
    /// A socket could not be bound or served.
    #[error("network")]
    Io(#[from] std::io::Error),
    /// A call to the gateway failed outright.
    #[error("calling the gateway")]
    Http(#[from] reqwest::Error),
    /// Key generation or signing failed.
    #[error("{0}")]
    Crypto(&'static str),
    /// The gateway refused a webhook the demo built: a bug on one side or the other.
    #[error("the gateway refused a webhook with {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// The gateway kept failing a webhook.
    #[error("the gateway did not accept a webhook after every redelivery (last: {0})")]
    GatewayDown(String),
    /// A component's task ended abnormally.
    #[error("a component stopped abnormally: {0}")]
    Task(String),
}

impl DemoError {
    /// Whether running again could help: only when the gateway was down.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::GatewayDown(_) | Self::Http(_) => true,
            Self::Config(_)
            | Self::Gateway(_)
            | Self::Processor(_)
            | Self::Handler(_)
            | Self::Io(_)
            | Self::Crypto(_)
            | Self::Refused { .. }
            | Self::Task(_) => false,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many orders walk through the story.
    pub orders: usize,
    /// The story's seed.
    pub seed: u64,
    /// Whether the APIs fail now and then and orders conflict.
    pub faults: bool,
    /// Seed Fluent with a mapping that differs from the documented one the orders are
    /// checked against (the demo's own self-test: it must then exit non-zero).
    pub wrong_mapping: bool,
    /// How long the processor may take to finish after the last webhook.
    pub settle_timeout: Duration,
    /// The environment the binaries' settings are read from.
    pub env: HashMap<String, String>,
}

/// How the run ended.
#[derive(Debug)]
pub struct Outcome {
    /// Each order's ending, in order-ref order.
    pub results: Vec<OrderResult>,
    /// The totals.
    pub summary: Summary,
}

impl Outcome {
    /// True when every order ended as the mapping says.
    pub fn all_right(&self) -> bool {
        self.results.iter().all(OrderResult::is_right)
    }
}

/// A running demo: the stack and what it was told.
pub struct Demo {
    stack: Stack,
    signer: Signer,
    options: Options,
}

impl Demo {
    /// Starts the stack with a fresh signing key and the mapping seeded.
    pub async fn start(options: Options) -> Result<Self, DemoError> {
        let signer = Signer::generate()?;
        let mut mapping = sandbox::seed::documented_mapping();
        if options.wrong_mapping {
            // A completed order would stay "Confirmed".
            mapping[0].1["fluent"]["COMPLETE"] = Value::from("Confirmed");
        }
        let stack = Stack::start(Setup {
            env: options.env.clone(),
            public_key: signer.public_key()?,
            mapping: &mapping,
            run_id: format!("{}-{}", std::process::id(), options.seed),
        })
        .await?;
        if options.faults {
            for endpoint in [Endpoint::FluentGraphql, Endpoint::CtGraphql] {
                stack.sandbox.set_fault(
                    endpoint,
                    Fault {
                        error_rate: FAULT_RATE,
                        body: FaultBody::Any,
                        ..Fault::default()
                    },
                );
            }
        }
        Ok(Self {
            stack,
            signer,
            options,
        })
    }

    /// The running stack.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// The signer of this run's webhooks.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Tells the story, waits for the processor to finish it, and judges every order.
    pub async fn play(&self) -> Result<Outcome, DemoError> {
        let options = &self.options;
        let plans = scenario::plan(options.orders, options.seed, options.faults);
        let total: usize = plans
            .iter()
            .map(|plan| plan.statuses.len() + plan.duplicates.len())
            .sum();
        let progress = ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} webhooks {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let sent = fluent::send_story(&self.stack, &plans, &self.signer, &progress).await?;
        progress.set_message("sent; waiting for the processor");
        let settled = self.settle(sent.accepted.len() as u64).await;
        progress.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let outcome = self.judge(&plans, &sent, seconds);
        if !settled {
            tracing::error!(
                timeout = ?options.settle_timeout,
                "the processor did not finish every record in time"
            );
        }
        Ok(outcome)
    }

    /// Waits until the processor finished every published record and holds none (a broker
    /// may redeliver one, which then counts twice): true, or false at the deadline.
    async fn settle(&self, published: u64) -> bool {
        let deadline = Instant::now() + self.options.settle_timeout;
        let stats = &self.stack.stats;
        let idle = || {
            stats.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0
                && stats.buffered.load(std::sync::atomic::Ordering::Relaxed) == 0
        };
        while stats.finished() < published || !idle() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn judge(&self, plans: &[OrderPlan], sent: &Sent, seconds: f64) -> Outcome {
        let expectation = Expectation::from_settings(&sandbox::seed::documented_mapping());
        let initial = States {
            order: Some("Open".into()),
            ..States::default()
        };
        let sandbox = &self.stack.sandbox;
        let results = plans
            .iter()
            .zip(&sent.ct_ids)
            .map(|(plan, ct_id)| {
                let order = sandbox.ct_order(ct_id);
                OrderResult {
                    order_ref: plan.order_ref.clone(),
                    fluent_status: plan.statuses.last().copied().unwrap_or_default().to_owned(),
                    actual: States {
                        order: order.as_ref().map(|order| order.order_state.clone()),
                        payment: order.as_ref().and_then(|order| order.payment_state.clone()),
                        shipment: order
                            .as_ref()
                            .and_then(|order| order.shipment_state.clone()),
                    },
                    expected: expectation.after(&initial, &plan.statuses),
                }
            })
            .collect();
        let stats = &self.stack.stats;
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let summary = Summary {
            webhooks: sent.webhooks,
            accepted: sent.accepted.len() as u64,
            replays: sent.replays,
            redeliveries: sent.redeliveries,
            retried: load(&stats.retried) + load(&stats.waited),
            coalesced: load(&stats.coalesced),
            dead_lettered: load(&stats.dead_lettered),
            fluent_calls: sandbox.calls(Endpoint::FluentToken)
                + sandbox.calls(Endpoint::FluentGraphql),
            ct_calls: sandbox.calls(Endpoint::CtToken) + sandbox.calls(Endpoint::CtGraphql),
            updates: sent
                .ct_ids
                .iter()
                .map(|id| sandbox.history(id).len() as u64)
                .sum(),
            latencies_ms: self.latencies(plans, sent, &expectation, &initial),
            bus: self.stack.bus.clone(),
            seconds,
        };
        Outcome { results, summary }
    }

    /// For each accepted webhook that changes its order's states: the time from its delivery
    /// to the first commercetools update that applied it (one sent for it or for a later
    /// event of its order, which the correlation id names), sorted.
    fn latencies(
        &self,
        plans: &[OrderPlan],
        sent: &Sent,
        expectation: &Expectation,
        initial: &States,
    ) -> Vec<f64> {
        let histories: Vec<Vec<sandbox::Update>> = sent
            .ct_ids
            .iter()
            .map(|id| self.stack.sandbox.history(id))
            .collect();
        let mut latencies: Vec<f64> = sent
            .accepted
            .iter()
            .filter(|accepted| {
                let statuses = &plans[accepted.order].statuses;
                expectation.after(initial, &statuses[..accepted.step])
                    != expectation.after(initial, &statuses[..=accepted.step])
            })
            .filter_map(|accepted| {
                histories[accepted.order]
                    .iter()
                    .find(|update| {
                        update
                            .correlation_id
                            .as_deref()
                            .and_then(|id| id.rsplit_once('-'))
                            .and_then(|(_, step)| step.parse::<usize>().ok())
                            .is_some_and(|step| step >= accepted.step)
                    })
                    .map(|update| (update.at_ms - accepted.at_ms).max(0.0))
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }

    /// Writes the table and the summary.
    pub fn print(&self, outcome: &Outcome, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "{}", report::orders_table(&outcome.results))?;
        write!(
            out,
            "{}",
            report::summary_text(&outcome.summary, &outcome.results)
        )?;
        writeln!(
            out,
            "  seed {} (run again with --seed {} for the same story)",
            self.options.seed, self.options.seed
        )
    }

    /// Stops everything.
    pub async fn stop(self) -> Result<(), DemoError> {
        self.stack.stop().await
    }
}
