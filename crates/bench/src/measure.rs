//! What a benchmark run measures: per-receiver order and loss bookkeeping, an HDR
//! latency histogram, and the CPU time and memory of the server processes read
//! from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A message body: `b|<run>|<sender>|<seq>|<due µs>|` then padding. The receiver
/// recovers who sent it, its place in the sender's sequence and when it was due.
pub fn encode_body(run: &str, sender: usize, seq: u64, due: Duration, size: usize) -> String {
    let mut body = format!("b|{run}|{sender}|{seq}|{}|", due.as_micros());
    if body.len() < size {
        body.extend(std::iter::repeat_n('x', size - body.len()));
    }
    body
}

/// Parses a body written by [`encode_body`] for run `run`.
pub fn decode_body(run: &str, body: &str) -> Option<(usize, u64, Duration)> {
    let mut parts = body.split('|');
    if parts.next()? != "b" || parts.next()? != run {
        return None;
    }
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let due = Duration::from_micros(parts.next()?.parse().ok()?);
    Some((sender, seq, due))
}

/// Deliveries seen by one receiver, per sender.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Per sender: which seqs arrived (index = seq) and the highest seen.
    seen: HashMap<usize, (Vec<bool>, u64)>,
    pub unique: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Receiver {
    /// Records one delivery of `seq` (1-based) from `sender`.
    pub fn record(&mut self, sender: usize, seq: u64) {
        let (bits, highest) = self.seen.entry(sender).or_default();
        let index = seq as usize;
        if bits.len() <= index {
            bits.resize(index + 1, false);
        }
        if bits[index] {
            self.duplicated += 1;
            return;
        }
        bits[index] = true;
        self.unique += 1;
        if seq < *highest {
            self.out_of_order += 1;
        } else {
            *highest = seq;
        }
    }

    /// Whether `seq` from `sender` arrived.
    pub fn has(&self, sender: usize, seq: u64) -> bool {
        self.seen.get(&sender).is_some_and(|(bits, _)| bits.get(seq as usize).copied().unwrap_or(false))
    }
}

/// Which sends the server acknowledged, per sender: the promise is about
/// these, so loss is counted against them, one by one. A send whose answer
/// never came (a tier killed mid-request) may or may not be delivered; it is
/// neither expected nor counted lost.
#[derive(Debug)]
pub struct Ledger {
    acked: Vec<std::sync::Mutex<Vec<u64>>>,
}

impl Ledger {
    pub fn new(senders: usize) -> Self {
        Self { acked: (0..senders).map(|_| std::sync::Mutex::new(Vec::new())).collect() }
    }

    /// Records that the server acknowledged `seq` from `sender`.
    pub fn ack(&self, sender: usize, seq: u64) {
        if let Some(acked) = self.acked.get(sender) {
            acked.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
        }
    }

    /// Of the acknowledged sends of `senders`, (delivered to `receiver`, lost).
    pub fn check(&self, receiver: &Receiver, senders: impl Iterator<Item = usize>) -> (u64, u64) {
        let (mut delivered, mut lost) = (0, 0);
        for sender in senders {
            let Some(acked) = self.acked.get(sender) else { continue };
            for &seq in acked.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if receiver.has(sender, seq) {
                    delivered += 1;
                } else {
                    lost += 1;
                }
            }
        }
        (delivered, lost)
    }
}

/// Latency from when a send was due to when it was delivered, in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 5 minutes at 3 significant digits.
    Histogram::new_with_bounds(1, 300_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 sig figs is valid"))
}

/// CPU seconds (user + system) used so far by the process `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// `USER_HZ`, the unit of `/proc/<pid>/stat` times: 100 on Linux for every
/// architecture Courier runs on.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The server processes on this machine: every `courier` other than a bench,
/// every `java` (Kafka's broker), and every `postgres` and `redis-server`
/// process (PostgreSQL's backends are one process per connection; the pools
/// open theirs before a run starts). Whatever runs on this machine counts: run
/// benches where nothing else does.
pub fn find_server_pids() -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let program = args.first().map(|a| String::from_utf8_lossy(a).to_string()).unwrap_or_default();
        let name = program.rsplit('/').next().unwrap_or_default();
        let is_bench = args.iter().any(|a| *a == b"bench");
        // PostgreSQL rewrites its backends' command lines; their comm stays.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let backend = matches!(comm.trim(), "postgres" | "redis-server");
        if (name == "courier" && !is_bench) || name == "java" || backend {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The value given to `flag` on `pid`'s command line (`--flag value` or
/// `--flag=value`).
pub fn arg_value(pid: u32, flag: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let inline = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag { args.get(i + 1).cloned() } else { arg.strip_prefix(&inline).map(str::to_owned) }
    })
}

/// The kernel's slab memory (`Slab:` of `/proc/meminfo`) in bytes: where
/// sockets, their files and epoll entries live.
pub fn slab_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Slab:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Total CPU seconds of `pids` (processes that vanished count as 0).
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// What a server process is, for the CPU table: `courier <tier>` for a
/// Courier process (its subcommand), otherwise its command name (`java` is
/// Kafka, `postgres`, `redis-server`).
pub fn process_kind(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if let Some(kind) = courier_kind(&args) {
        return kind;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim().to_owned()
}

/// `courier <subcommand>` when `args` run Courier, directly or under `nice`
/// (the bench starts its workers so; they are `nice` until it execs them).
fn courier_kind(args: &[String]) -> Option<String> {
    let named = |arg: &String, name: &str| arg.rsplit('/').next() == Some(name);
    let program = match args.first() {
        Some(first) if named(first, "nice") => args.iter().position(|arg| named(arg, "courier"))?,
        Some(first) if named(first, "courier") => 0,
        _ => return None,
    };
    Some(format!("courier {}", args.get(program + 1).map_or("", String::as_str)))
}

/// CPU seconds used so far by each kind of process among `pids` (see
/// [`process_kind`]).
pub fn cpu_by_kind(pids: &[u32]) -> BTreeMap<String, f64> {
    let mut kinds = BTreeMap::new();
    for pid in pids {
        if let Some(cpu) = cpu_seconds(*pid) {
            *kinds.entry(process_kind(*pid)).or_default() += cpu;
        }
    }
    kinds
}

/// CPU seconds per kind between two [`cpu_by_kind`] readings, busiest first.
pub fn cpu_spent(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut spent: Vec<(String, f64)> =
        after.iter().map(|(kind, cpu)| (kind.clone(), (cpu - before.get(kind).unwrap_or(&0.0)).max(0.0))).collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    spent
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_still_under_nice_counts_as_the_bench() {
        let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            courier_kind(&args("/usr/bin/nice -n 10 /opt/courier bench connections")).as_deref(),
            Some("courier bench")
        );
        assert_eq!(courier_kind(&args("/opt/courier connect --server-id c-0")).as_deref(), Some("courier connect"));
        assert_eq!(courier_kind(&args("/usr/bin/nice -n 10 sleep 5")), None);
        assert_eq!(courier_kind(&args("redis-server *:6379")), None);
    }

    /// Loss is counted against what was acknowledged, one message at a time:
    /// an unacknowledged send that arrived is not a loss, and one that did not
    /// is not expected.
    #[test]
    fn loss_is_what_was_acknowledged_and_never_arrived() {
        let ledger = Ledger::new(2);
        let mut receiver = Receiver::default();
        for seq in [1, 2, 3] {
            ledger.ack(0, seq);
        }
        ledger.ack(1, 1);
        receiver.record(0, 1);
        receiver.record(0, 3);
        receiver.record(0, 4); // never acknowledged (its answer was lost)
        assert_eq!(ledger.check(&receiver, 0..1), (2, 1), "seq 2 acknowledged and missing");
        assert_eq!(ledger.check(&receiver, 0..2), (2, 2), "sender 1's acknowledged seq 1 missing too");
        assert!(receiver.has(0, 4) && !receiver.has(0, 2) && !receiver.has(5, 1));
    }

    #[test]
    fn bodies_round_trip_and_foreign_ones_are_ignored() {
        let body = encode_body("r1", 7, 42, Duration::from_micros(1234), 100);
        assert_eq!(body.len(), 100);
        assert_eq!(decode_body("r1", &body), Some((7, 42, Duration::from_micros(1234))));
        assert_eq!(decode_body("r2", &body), None, "another run's message");
        assert_eq!(decode_body("r1", "hello"), None);
    }

    #[test]
    fn receiver_counts_duplicates_and_reordering() {
        let mut r = Receiver::default();
        for seq in [1, 2, 4, 3, 4, 5] {
            r.record(0, seq);
        }
        assert_eq!((r.unique, r.duplicated, r.out_of_order), (5, 1, 1));
    }

    #[test]
    fn reads_this_process_from_proc() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let kinds = cpu_by_kind(&[me]);
        assert_eq!(kinds.keys().collect::<Vec<_>>(), [comm.trim()], "not a courier binary: its command name");
    }

    #[test]
    fn cpu_spent_is_per_kind_and_busiest_first() {
        let before = BTreeMap::from([("java".to_owned(), 10.0), ("courier logic".to_owned(), 1.0)]);
        let after = BTreeMap::from([
            ("java".to_owned(), 11.5),
            ("courier logic".to_owned(), 4.0),
            ("postgres".to_owned(), 0.5),
        ]);
        assert_eq!(
            cpu_spent(&before, &after),
            [("courier logic".to_owned(), 3.0), ("java".to_owned(), 1.5), ("postgres".to_owned(), 0.5)]
        );
    }
}
