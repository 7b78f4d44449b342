//! `soak [DURATION] [--no-marker] [--seed N] [--bus kafka|nats]`: the soak of
//! `e2e_tests::soak` against the broker in `TEST_KAFKA_BROKERS` or the JetStream server in
//! `TEST_NATS_URL` (`scripts/soak` starts them). DURATION is how long load is
//! sent, e.g. `60s` or `10m` (default 60s). Exits non-zero when a check failed.

use anyhow::Context as _;
use e2e_tests::soak::{Options, SoakBus, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-marker" => options.marker = false,
            "--bus" => {
                options.bus = match args.next().as_deref() {
                    Some("kafka") => SoakBus::Kafka,
                    Some("nats") => SoakBus::Nats,
                    _ => anyhow::bail!("--bus needs kafka or nats"),
                };
            }
            "--seed" => {
                options.seed = args
                    .next()
                    .context("--seed needs a number")?
                    .parse()
                    .context("--seed needs a number")?;
            }
            duration => {
                options.duration = humantime::parse_duration(duration)
                    .with_context(|| format!("not a duration: {duration} (e.g. 60s, 10m)"))?;
            }
        }
    }
    run(options).await
}
