//! Sends signed webhooks at a gateway and reports accepted/s, latency percentiles and counts
//! per status.
//!
//! ```text
//! loadgen --generate-key key.der            # prints the public key to configure the gateway
//! loadgen --url http://127.0.0.1:8080/webhooks/fluent --rsa-key key.der -c 64 -n 20000
//! loadgen --url ... --hmac-secret whsec_... -c 64 --seconds 30
//! ```

// A load generator's report is its output.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bench::load::{Load, Signer, run};
use clap::Parser;

/// Signed-webhook load generator.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Write a new RSA-2048 private key (PKCS#8 DER) here, print its public key, and exit.
    #[arg(long)]
    generate_key: Option<PathBuf>,
    /// The webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/fluent")]
    url: String,
    /// Sign with this RSA private key (PKCS#8 DER), as Fluent does.
    #[arg(long, conflicts_with = "hmac_secret")]
    rsa_key: Option<PathBuf>,
    /// Sign Standard Webhooks style with this secret (`whsec_<base64>`).
    #[arg(long)]
    hmac_secret: Option<String>,
    /// Requests in flight at once.
    #[arg(short, long, default_value_t = 64)]
    concurrency: usize,
    /// Requests to send.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    count: usize,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Pace requests at this many per second (open loop) instead of as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
}

fn signer(args: &Args) -> anyhow::Result<Signer> {
    if let Some(path) = &args.rsa_key {
        let der = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let key = RsaKeyPair::from_pkcs8(&der).context("an RSA PKCS#8 DER private key")?;
        return Ok(Signer::Rsa(key));
    }
    let secret = args
        .hmac_secret
        .as_deref()
        .context("give --rsa-key or --hmac-secret")?;
    let bytes = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .context("base64 secret")?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes);
    Ok(Signer::Hmac(Box::new(key)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.generate_key {
        let key = RsaKeyPair::generate(KeySize::Rsa2048)?;
        std::fs::write(path, key.as_der()?.as_ref())?;
        println!("{}", STANDARD.encode(key.public_key().as_der()?.as_ref()));
        return Ok(());
    }
    let load = Load {
        url: args.url.clone(),
        signer: signer(&args)?,
        concurrency: args.concurrency,
        count: args.count,
        duration: Duration::from_secs(args.seconds),
        progress: true,
        rate: args.rate,
    };
    let report = run(load).await;
    println!("\n{}", report.summary());
    Ok(())
}
