//! `courier bench logins`: what a burst of registrations and logins costs the
//! server in memory — resident memory before (idle), at the peak, and once the
//! burst is over (settled) — since password hashing is the one request whose
//! cost is memory by design.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clients::Target;
use crate::measure;

/// The outcome of a `logins` run.
#[derive(Debug, Serialize)]
pub struct LoginReport {
    pub users: usize,
    pub parallel: usize,
    pub server_pids: Vec<u32>,
    pub registrations_per_s: f64,
    pub logins_per_s: f64,
    /// Resident memory of the server processes together, bytes.
    pub idle_rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub settled_rss_bytes: u64,
    /// Seconds waited after the burst before `settled` was read.
    pub settle_s: f64,
}

/// Registers `users` new users, then logs each in again, `parallel` at a time,
/// sampling the servers' resident memory throughout.
pub async fn run(
    target: &Target,
    prefix: &str,
    users: usize,
    parallel: usize,
    settle: Duration,
    pids: Vec<u32>,
) -> anyhow::Result<LoginReport> {
    let rss = {
        let pids = pids.clone();
        move || pids.iter().filter_map(|&pid| measure::rss_bytes(pid)).sum::<u64>()
    };
    let idle = rss();
    // The peak is sampled every 10 ms while the burst runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, rss) = (sampling.clone(), rss.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    // New names every run (user names are at most 20 characters).
    let run = format!("{prefix}{:x}", courier_ids::now_unix_ms() % 0x10_0000);
    eprintln!("registering {users} users, {parallel} at a time…");
    let started = Instant::now();
    target.users(&run, 0, users, parallel).await?;
    let registrations_per_s = users as f64 / started.elapsed().as_secs_f64();
    eprintln!("logging them in again…");
    let started = Instant::now();
    target.users(&run, 0, users, parallel).await?;
    let logins_per_s = users as f64 / started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await?.max(rss());
    eprintln!("waiting {} s for memory to settle…", settle.as_secs_f64());
    tokio::time::sleep(settle).await;
    Ok(LoginReport {
        users,
        parallel,
        server_pids: pids,
        registrations_per_s,
        logins_per_s,
        idle_rss_bytes: idle,
        peak_rss_bytes: peak,
        settled_rss_bytes: rss(),
        settle_s: settle.as_secs_f64(),
    })
}

pub fn print(report: &LoginReport) {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!("scenario logins  users {}  parallel {}  servers {:?}", report.users, report.parallel, report.server_pids);
    println!("registrations/s {:>12.1}", report.registrations_per_s);
    println!("logins/s        {:>12.1}", report.logins_per_s);
    println!("idle RSS        {:>9.1} MiB", mib(report.idle_rss_bytes));
    println!("peak RSS        {:>9.1} MiB", mib(report.peak_rss_bytes));
    println!("settled RSS     {:>9.1} MiB  ({} s after the burst)", mib(report.settled_rss_bytes), report.settle_s);
}
