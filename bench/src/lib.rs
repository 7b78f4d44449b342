//! Shared pieces of the benchmarks: realistic records and robust summaries.
//!
//! These machines are noisy, so every benchmark measures its baseline in the same run,
//! alternating rounds of the two, and reports medians and their ratio rather than absolute
//! times alone.

pub mod kafka;
pub mod load;

use bytes::Bytes;

/// A webhook body of about 600 bytes, as Fluent sends for an order status change.
pub fn webhook_body(i: usize) -> Bytes {
    format!(
        r#"{{"id":"{id}","name":"fc.connect.order.webhook.order-status-update","accountId":"ACME","retailerId":"1","entityId":"{i}","entityRef":"HD_{i:08}","entityType":"ORDER","entityStatus":"SHIPPED","type":"NORMAL","attributes":{{}},"meta":{{"mode":"SYNC","simulation":false,"models":[]}},"trailLogs":[],"errorLogs":[],"rootEntityId":"{i}","rootEntityType":"ORDER","rootEntityRef":"HD_{i:08}","source":"benchmark","padding":"{pad}"}}"#,
        id = uuid::Uuid::new_v4(),
        pad = "x".repeat(150),
    )
    .into()
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> std::io::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let total = ticks(11) + ticks(12);
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every common architecture.
    Ok(std::time::Duration::from_millis(total * 10))
}

/// Stops the processes `pids` with SIGTERM, all at once, and gives the CPU time they used in
/// all, their exit work (a trace exporter's last flush, say) included: read while each is a
/// zombie, not yet reaped by its parent (which the caller then does, with
/// `Process::terminate`, say).
pub fn cpu_time_at_exit(pids: &[u32]) -> anyhow::Result<std::time::Duration> {
    for pid in pids {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "could not send SIGTERM to {pid}");
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut total = std::time::Duration::ZERO;
    for pid in pids {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            if state.is_some_and(|rest| rest.starts_with('Z')) {
                total += cpu_time(*pid)?;
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "{pid} did not exit within a minute of SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Ok(total)
}

/// The OTLP receiver `BENCH_OTLP` asks for (`http` or `grpc`), for a contender that exports
/// every span; `None` when it is unset.
pub async fn otlp_receiver() -> anyhow::Result<Option<e2e_tests::otlp::Receiver>> {
    use e2e_tests::otlp::{Receiver, Transport};
    Ok(match std::env::var("BENCH_OTLP").as_deref() {
        Ok("http") => Some(Receiver::start(Transport::Http).await?),
        Ok("grpc") => Some(Receiver::start(Transport::Grpc).await?),
        Ok(other) => anyhow::bail!("BENCH_OTLP={other}: http or grpc"),
        Err(_) => None,
    })
}
