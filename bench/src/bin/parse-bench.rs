//! Parsing and validating a webhook body (`FluentEvent::parse`: what the gateway does to every
//! request after the signature, and the processor to every record) against a plain
//! `serde_json::Value` parse of the same body, alternating rounds, on 10,000 realistic ~600-byte
//! bodies. Prints ns per body and the ratio.
//!
//! `./scripts/bench parse [ROUNDS]` builds and runs it.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use bench::{median, webhook_body};
use common::event::{FluentEvent, RequiredFields};

fn time_per_body(bodies: &[bytes::Bytes], parse: impl Fn(&[u8])) -> f64 {
    let started = Instant::now();
    for body in bodies {
        parse(black_box(body));
    }
    started.elapsed().as_secs_f64() * 1e9 / bodies.len() as f64
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(15), |n| n.parse())?;
    let bodies: Vec<_> = (0..10_000).map(webhook_body).collect();
    let required = RequiredFields::default();
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(time_per_body(&bodies, |body| {
            black_box(FluentEvent::parse(body, &required).expect("valid body"));
        }));
        plain.push(time_per_body(&bodies, |body| {
            black_box(serde_json::from_slice::<serde_json::Value>(body).expect("valid JSON"));
        }));
    }
    let (ours, plain) = (median(&mut ours), median(&mut plain));
    println!(
        "per body, medians of {rounds} rounds: FluentEvent::parse {ours:.0} ns, \
         serde_json::Value {plain:.0} ns; ratio {:.2}",
        ours / plain
    );
    Ok(())
}
