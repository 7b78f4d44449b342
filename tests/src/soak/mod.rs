//! The soak (`scripts/soak DURATION`): three processors and two gateways as real processes on
//! the Kafka broker and the sandbox APIs with injected faults (5xx and 429 in every body shape,
//! version conflicts), orders walking random status sequences with Fluent's retries (late ones
//! after newer events included), a processor SIGKILLed or stopped and restarted every few
//! seconds. At the end the broker and the APIs are checked (see `verify`); the report says what
//! happened and how long the group took to recover from each kill.
//!
//! - `world`: the processes and the chaos done to them.
//! - `bus`: the broker (Kafka or NATS JetStream, `--bus`) as the checks see it.
//! - `load`: the orders and Fluent's way of sending their webhooks.
//! - `verify`: the checks.

mod bus;
mod load;
mod verify;
mod world;

pub use bus::SoakBus;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use self::load::{Counts, Load};
use self::world::World;

/// How to soak.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long load is sent (the run then waits for the group to catch up and checks).
    pub duration: Duration,
    /// Configure the sync marker (`CTP_SYNC_MARKER_FIELD`): step-backs are then failures.
    pub marker: bool,
    /// Seeds the load's and the chaos's choices.
    pub seed: u64,
    /// Share of API calls answered with an error.
    pub fault_rate: f64,
    /// Average time between two processor stops.
    pub chaos_every: Duration,
    /// Orders being walked at once.
    pub concurrency: usize,
    /// The broker.
    pub bus: SoakBus,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(60),
            marker: true,
            seed: 1,
            fault_rate: 0.05,
            chaos_every: Duration::from_secs(4),
            concurrency: 24,
            bus: SoakBus::Kafka,
        }
    }
}

/// What the chaos did.
#[derive(Debug, Default)]
struct Chaos {
    kills: usize,
    leaves: usize,
    recoveries: Vec<Duration>,
}

/// Runs the soak and prints its report; fails when a check failed.
#[allow(clippy::print_stderr)]
pub async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let world = Arc::new(tokio::sync::Mutex::new(
        World::start(options.fault_rate, options.marker, options.bus).await?,
    ));
    let (sandbox, gateways) = {
        let world = world.lock().await;
        (world.sandbox.clone(), world.gateways.clone())
    };
    let load = Arc::new(Load {
        sandbox: sandbox.clone(),
        gateways,
        client: reqwest::Client::new(),
        counts: Arc::new(Counts::default()),
        orders: Arc::default(),
    });
    let until = Instant::now() + options.duration;
    let conflicts = tokio::spawn(conflicts(sandbox.clone(), until, options.seed));
    let chaos = tokio::spawn(chaos(Arc::clone(&world), until, options.clone()));
    Arc::clone(&load)
        .run(options.concurrency, until, options.seed)
        .await;
    let chaos = chaos.await??;
    conflicts.await?;
    let world = world.lock().await;
    let caught_up = verify::until_committed(&world, Duration::from_secs(180)).await?;
    let orders = load
        .orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut findings = verify::check(&world, &orders, options.marker).await?;
    if !caught_up {
        let progress = world.broker.progress().await?;
        findings.problems.insert(
            0,
            format!(
                "the consumers never finished the topic: (end, done) per partition {progress:?}"
            ),
        );
        for line in world.processor_metrics().await {
            eprintln!("  {line}");
        }
        for line in world.broker.describe().await {
            eprintln!("  {line}");
        }
    }
    report(
        &options,
        &load.counts,
        &orders,
        &chaos,
        &findings,
        started.elapsed(),
    );
    if findings.problems.is_empty() {
        Ok(())
    } else {
        eprintln!("what the processors logged:");
        for line in world.processor_logs() {
            eprintln!("  {line}");
        }
        for problem in findings.problems.iter().take(20) {
            eprintln!("  FAILED: {problem}");
        }
        bail!("{} checks failed", findings.problems.len())
    }
}

/// Another writer bumps random orders' versions: updates meet version conflicts.
async fn conflicts(sandbox: sandbox::Sandbox, until: Instant, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x00c0_ffee);
    while Instant::now() < until {
        let ids = sandbox.ct_order_ids();
        if !ids.is_empty() {
            sandbox.force_conflicts(&ids[rng.usize(..ids.len())], 1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `chaos_every` (± half), stops a random processor (three times in four a SIGKILL, else
/// a SIGTERM) and starts it again a moment later (on Kafka, after a kill, once the killed
/// member's session ran out: `World::restart_after_kill`); after each kill, measures how long until
/// the group has committed everything that was on the topic when it happened.
async fn chaos(
    world: Arc<tokio::sync::Mutex<World>>,
    until: Instant,
    options: Options,
) -> anyhow::Result<Chaos> {
    let mut rng = fastrand::Rng::with_seed(options.seed ^ 0xdead);
    let recoveries = Arc::new(Mutex::new(Vec::new()));
    let mut measuring = Vec::new();
    let mut chaos = Chaos::default();
    loop {
        let pause = options.chaos_every.mul_f64(0.5 + rng.f64());
        if Instant::now() + pause >= until {
            break;
        }
        tokio::time::sleep(pause).await;
        let crash = rng.f64() < 0.75;
        let mut guard = world.lock().await;
        let slot = rng.usize(..guard.processors());
        let at = Instant::now();
        let ends = guard.broker.progress().await?;
        if !guard.stop_processor(slot, crash)? {
            continue;
        }
        let mut down = Duration::from_millis(rng.u64(300..2000));
        if crash {
            down += guard.restart_after_kill();
            chaos.kills += 1;
            let broker = guard.broker.clone();
            let recoveries = Arc::clone(&recoveries);
            measuring.push(tokio::spawn(async move {
                recovery(broker, ends, at, recoveries).await
            }));
        } else {
            chaos.leaves += 1;
        }
        drop(guard);
        tokio::time::sleep(down).await;
        world.lock().await.start_processor(slot)?;
    }
    for task in measuring {
        task.await??;
    }
    chaos.recoveries = recoveries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(chaos)
}

/// Waits until the consumers are done up to `ends` (the topic at the kill), up to two
/// minutes.
async fn recovery(
    broker: bus::Broker,
    ends: Vec<(u64, u64)>,
    at: Instant,
    recoveries: Arc<Mutex<Vec<Duration>>>,
) -> anyhow::Result<()> {
    while at.elapsed() < Duration::from_secs(120) {
        let now = broker.progress().await?;
        if now
            .iter()
            .zip(&ends)
            .all(|((_, committed), (end, _))| committed >= end)
        {
            recoveries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(at.elapsed());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn report(
    options: &Options,
    counts: &Counts,
    orders: &[load::Order],
    chaos: &Chaos,
    findings: &verify::Findings,
    elapsed: Duration,
) {
    let forced = orders.iter().filter(|order| order.ct_id.is_empty()).count();
    let max_recovery = chaos.recoveries.iter().max().copied().unwrap_or_default();
    let lines = [
        format!(
            "soak on {:?}: {:?} of load ({:?} in all), sync marker {}, seed {}, {:.0} % API faults",
            options.bus,
            options.duration,
            elapsed,
            if options.marker { "on" } else { "off" },
            options.seed,
            options.fault_rate * 100.0
        ),
        format!(
            "webhooks sent {} (accepted {}, refused and retried by Fluent {}, late retries {})",
            counts.webhooks.load(Ordering::Relaxed),
            counts.accepted.load(Ordering::Relaxed),
            counts.refused.load(Ordering::Relaxed),
            counts.late_retries.load(Ordering::Relaxed)
        ),
        format!(
            "orders {} ({forced} that commercetools lacks, forced to the DLQ); records on the topic {}, dead letters {}",
            orders.len(),
            findings.topic_records,
            findings.dead_letters
        ),
        format!(
            "processors killed {}, stopped gracefully {}, rebalances about {} (a leave and a join each)",
            chaos.kills,
            chaos.leaves,
            2 * (chaos.kills + chaos.leaves)
        ),
        format!(
            "recovery after a kill (everything on the topic at the kill committed): max {max_recovery:.1?} over {} kills{}",
            chaos.recoveries.len(),
            match chaos.kills - chaos.recoveries.len() {
                0 => String::new(),
                // Not a failure by itself: the end-of-run checks say whether the group caught up.
                slow => format!(", {slow} not within 120 s"),
            }
        ),
        format!(
            "update histories stepping back: {} ({})",
            findings.step_backs,
            if options.marker {
                "must be 0 with the sync marker"
            } else {
                "counted: without the sync marker a redelivery after a crash revisits older states"
            }
        ),
        format!(
            "orders that ended in an older state: {} ({})",
            findings.uncovered,
            if options.marker {
                "none may with the sync marker: each is a failed check"
            } else {
                "counted, not failed: without the sync marker a late Fluent retry, or an update a member evicted from the group had already sent, can move an order back (README)"
            }
        ),
        format!("checks failed: {}", findings.problems.len()),
    ];
    for line in lines {
        println!("{line}");
    }
}
