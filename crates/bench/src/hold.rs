//! `courier bench connections`: many idle authenticated connections, held by
//! worker processes, and what holding them costs the servers.
//!
//! One process may hold only as many sockets as its open-file limit allows and
//! one source address only as many connections to a port as the ephemeral
//! range has ports, so the coordinator starts `count / per_process` workers
//! (this same binary, `bench connections --worker-offset …`), each with its own
//! home connect node and, on loopback, its own source addresses (127.0.s.w+1,
//! as many as keep each under [`PER_SOURCE`] connections).
//! Workers speak to the coordinator in lines: a status line four times a
//! second (counters only, so the coordinator's progress and timeline cost no
//! bookkeeping per connection) and one line per milestone; the coordinator
//! answers with commands on their stdin. Closing stdin ends a worker.
//!
//! The run goes in phases, each timed and charged its CPU by process kind (what
//! limited it): log in (register the users), open (the connections), then
//! optionally a probe (room and private messages sent over HTTP while the rest
//! are held, their latency measured at the receivers), and a node kill (its
//! users reconnect to the next node while a Redis probe times PINGs, to show
//! whether the reaper stalls Redis), followed by a second probe. Memory is read
//! per kind of server process (connect, logic, Redis, task, …) idle, after the
//! logins and once every connection is held; a timeline of connections and
//! memory, sampled every second, goes into the JSON report for plotting.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use courier_retry::Backoff;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clients::{self, FrameSink, FrameStream, Target, Transport, User};
use crate::measure::{self, Latency};

/// What the `connections` scenario is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub count: usize,
    pub per_process: usize,
    /// Source addresses, one per worker in turn; empty: 127.0.0.(w+1) on
    /// loopback, the system's choice otherwise.
    pub sources: Vec<IpAddr>,
    pub rooms: u64,
    /// Logins in flight per worker.
    pub login_parallel: usize,
    /// Connection opens in flight per worker.
    pub open_parallel: usize,
    /// Room messages, and as many private messages, sent while held.
    pub probe: usize,
    /// The node (index into `--ws`) to kill once everything is held.
    pub kill_node: Option<usize>,
    /// Redis (`host:port` or `redis://host:port`) to time PINGs on while the
    /// killed node is reaped.
    pub redis: Option<String>,
    /// Seconds to keep timing Redis once the killed node's users are back (the
    /// node's lease must lapse and the reaper run in that time).
    pub reap_wait: f64,
    /// Seconds to wait before each probe.
    pub settle: f64,
}

/// The outcome of a `connections` run.
#[derive(Debug, Serialize)]
pub struct HoldReport {
    pub scenario: &'static str,
    /// The phase an interrupt ended the run in; the figures are what it had
    /// reached (no probe, no kill, no worker error reasons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_in: Option<&'static str>,
    pub transport: Transport,
    pub connections_asked: usize,
    pub connections_held: u64,
    pub workers: usize,
    pub connect_nodes: usize,
    pub rooms: u64,
    pub phases: Vec<Phase>,
    /// Resident memory by kind of server process.
    pub memory: Vec<KindMemory>,
    /// Connect, logic, Redis and task together, per held connection (bytes).
    pub server_bytes_per_connection: f64,
    /// The kernel's slab growth per held connection (both ends of each socket).
    pub kernel_slab_bytes_per_connection: Option<f64>,
    /// Every connect process: what it held and its resident memory.
    pub connect_processes: Vec<ConnectProcess>,
    pub probes: Vec<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    /// Why logins or opens failed (the first reasons, with how often).
    pub errors: BTreeMap<String, u64>,
    pub timeline: Vec<Sample>,
}

/// One phase of the run: how long it took, what it did, and who spent the CPU.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub done: u64,
    pub failed: u64,
    /// Attempts that were refused or failed and then worked when retried.
    pub retried: u64,
    pub per_second: f64,
    /// CPU seconds spent in the phase by kind of process, busiest first (the
    /// bench's own workers as `courier bench`); two cores give 2 s per second.
    pub cpu_s: Vec<(String, f64)>,
    /// The share of the machine's cores busy in the phase (1.0: CPU-bound).
    pub cpu_busy: f64,
}

/// Resident memory of one kind of process (all its processes together) at
/// the three moments, and what the logins and the connections added.
#[derive(Debug, Serialize)]
pub struct KindMemory {
    pub kind: String,
    pub processes: usize,
    pub idle_bytes: u64,
    pub logged_in_bytes: u64,
    pub held_bytes: u64,
    /// (after logins − idle) / users logged in.
    pub bytes_per_login: f64,
    /// (held − after logins) / connections held.
    pub bytes_per_connection: f64,
}

/// One connect process: the connections its workers opened on it, and its
/// resident memory after the logins and once they were held.
#[derive(Debug, Serialize)]
pub struct ConnectProcess {
    pub pid: u32,
    pub ws_port: Option<u16>,
    pub connections: u64,
    pub logged_in_bytes: u64,
    pub held_bytes: u64,
    pub bytes_per_connection: Option<f64>,
}

/// Messages sent while everything is held, and what reached the receivers.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub when: &'static str,
    pub room_messages: u64,
    pub private_messages: u64,
    pub send_failures: u64,
    /// Every member of each room (the sender too) and, for a private
    /// message, its recipient and its sender's own copy: counted as if
    /// every user were connected.
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub latency: Latency,
    /// The servers' own timing of the probe messages by stage, when their
    /// metrics could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<crate::stages::Breakdown>,
}

/// A connect node killed while holding its share, and its users' return.
#[derive(Debug, Serialize)]
pub struct Kill {
    pub node: usize,
    pub pid: u32,
    pub connections_on_node: u64,
    pub reconnected: u64,
    pub seconds_to_reconnect_all: Option<f64>,
    /// Redis PING round trips while the node's users reconnected and its
    /// entries were reaped.
    pub redis_pings: u64,
    pub redis_ping: Option<Latency>,
}

/// One point of the timeline.
#[derive(Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: &'static str,
    pub logged_in: u64,
    pub open: u64,
    pub failed: u64,
    pub reconnects: u64,
    /// Resident memory by kind of server process.
    pub rss_bytes: BTreeMap<String, u64>,
    pub kernel_slab_bytes: u64,
}

/// The counters a worker reports in its status line, in this order.
#[derive(Debug, Default)]
struct Counters {
    logged: AtomicU64,
    login_failed: AtomicU64,
    login_retries: AtomicU64,
    opened: AtomicU64,
    open_failed: AtomicU64,
    open_retries: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    probe_received: AtomicU64,
}

impl Counters {
    fn fields(&self) -> [&AtomicU64; 9] {
        [
            &self.logged,
            &self.login_failed,
            &self.login_retries,
            &self.opened,
            &self.open_failed,
            &self.open_retries,
            &self.dropped,
            &self.reconnects,
            &self.probe_received,
        ]
    }

    /// Connections open now: opened (first time or again) and not dropped.
    fn open_now(&self) -> u64 {
        let opened = self.opened.load(Ordering::Relaxed) + self.reconnects.load(Ordering::Relaxed);
        opened.saturating_sub(self.dropped.load(Ordering::Relaxed))
    }

    fn status_line(&self) -> String {
        let values: Vec<String> = self.fields().iter().map(|c| c.load(Ordering::Relaxed).to_string()).collect();
        format!("S {}", values.join(" "))
    }

    fn read_status_line(&self, line: &str) {
        for (field, value) in self.fields().iter().zip(line.split(' ').skip(1)) {
            if let Ok(value) = value.parse() {
                field.store(value, Ordering::Relaxed);
            }
        }
    }
}

/// Reasons for failures, with how often; the first 20 distinct.
#[derive(Debug, Default)]
struct Reasons(std::sync::Mutex<BTreeMap<String, u64>>);

impl Reasons {
    fn note(&self, reason: String) {
        let mut reasons = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = reasons.get_mut(&reason) {
            *count += 1;
        } else if reasons.len() < 20 {
            reasons.insert(reason, 1);
        }
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a worker hands back on `REPORT`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerResult {
    /// Probe latencies since the last report, microseconds.
    latencies_us: Vec<u64>,
    probe_sent: u64,
    probe_failed: u64,
    errors: BTreeMap<String, u64>,
}

/// The marker of probe message bodies: `probe|<run>|<sent unix µs>|`.
const PROBE: &str = "probe|";

// ---------------------------------------------------------------- coordinator

/// One worker process, as the coordinator sees it.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    counters: Arc<Counters>,
    node: usize,
    users: usize,
}

impl Worker {
    async fn tell(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.context("a worker stopped listening")
    }
}

/// The workers and their milestone lines.
struct Workers {
    all: Vec<Worker>,
    said: mpsc::UnboundedReceiver<(usize, String)>,
    /// Woken whenever a worker's status line arrives.
    reported: Arc<Notify>,
}

impl Workers {
    fn total(&self, pick: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.all.iter().map(|w| pick(&w.counters).load(Ordering::Relaxed)).sum()
    }

    /// Waits for the next status line of any worker (each sends four a
    /// second), at most `within`; false if none came or `stop` came first.
    async fn next_report(&self, within: Duration, stop: &CancellationToken) -> bool {
        tokio::select! {
            reported = tokio::time::timeout(within, self.reported.notified()) => reported.is_ok(),
            _ = stop.cancelled() => false,
        }
    }

    async fn tell_all(&mut self, command: &str) -> anyhow::Result<()> {
        for worker in &mut self.all {
            worker.tell(command).await?;
        }
        Ok(())
    }

    /// Waits until every worker has said a line starting with `word`; returns
    /// the rest of each worker's line.
    async fn all_say(&mut self, word: &str) -> anyhow::Result<Vec<String>> {
        let mut answers: Vec<Option<String>> = vec![None; self.all.len()];
        while answers.iter().any(Option::is_none) {
            let Some((w, line)) = self.said.recv().await else { bail!("every worker is gone") };
            if line == "EXITED" {
                bail!("worker {w} exited while the others were to say {word}; its errors are above");
            }
            if let Some(rest) = line.strip_prefix(word) {
                answers[w] = Some(rest.trim().to_owned());
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Collects every worker's [`WorkerResult`].
    async fn results(&mut self) -> anyhow::Result<Vec<WorkerResult>> {
        self.tell_all("REPORT").await?;
        self.all_say("RESULT").await?.iter().map(|json| Ok(serde_json::from_str(json)?)).collect()
    }
}

/// Server memory by kind of process, and the total.
fn memory_by_kind(pids: &[u32]) -> BTreeMap<String, (usize, u64)> {
    let mut kinds: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for &pid in pids {
        if let Some(rss) = measure::rss_bytes(pid) {
            let entry = kinds.entry(measure::process_kind(pid)).or_default();
            entry.0 += 1;
            entry.1 += rss;
        }
    }
    kinds
}

/// The kinds whose memory is the server's cost of a connection.
/// Most connections bench puts on one source address.
///
/// `bind(address, 0)` looks for a free port in the odd half of the ephemeral
/// range first (Linux keeps the even half for `connect()`), about 14,000 ports
/// with the default range, scanning on from a random one. The scan lengthens
/// as that half fills, and once it is full every further bind walks all of it
/// before trying the even ports: with one address per worker of 18,000
/// connections that point came at 55 × 14,000 ≈ 770,000 connections, and the
/// kernel's port search took most of both cores. Half of the odd ports keeps
/// the search a few steps long.
pub const PER_SOURCE: usize = 7_000;

/// Worker `w`'s source addresses for its `users` connections: enough that none
/// carries more than [`PER_SOURCE`]. Given addresses are handed out in turn;
/// on loopback the default is 127.0.s.(w+1), s = 0, 1, …; elsewhere none (the
/// kernel picks).
fn worker_sources(given: &[IpAddr], loopback: bool, w: usize, users: usize) -> Vec<IpAddr> {
    let wanted = users.div_ceil(PER_SOURCE).max(1);
    match given {
        [] if loopback && w < 254 => {
            (0..wanted.min(256)).map(|s| IpAddr::from([127, 0, s as u8, (w + 1) as u8])).collect()
        }
        [] => Vec::new(),
        given => (0..wanted).map(|s| given[(w * wanted + s) % given.len()]).collect(),
    }
}

const SERVER_KINDS: [&str; 4] = ["courier connect", "courier logic", "redis-server", "courier task"];

/// Runs the `connections` scenario's coordinator.
pub async fn run(
    args: &crate::BenchArgs,
    target: &Target,
    options: Options,
    pids: Vec<u32>,
    stop: CancellationToken,
) -> anyhow::Result<HoldReport> {
    let nodes: Vec<String> = match args.transport {
        Transport::Ws => args.ws.split(',').map(str::to_owned).collect(),
        Transport::Tcp => args.tcp.split(',').map(str::to_owned).collect(),
    };
    let per_process = options.per_process.max(1);
    let worker_count = options.count.div_ceil(per_process);
    let loopback = nodes.iter().all(|n| n.contains("127.0.0.1") || n.contains("localhost"));
    let exe = std::env::current_exe().context("locating the courier binary")?;
    let (say, said) = mpsc::unbounded_channel();
    let reported = Arc::new(Notify::new());
    let mut all = Vec::with_capacity(worker_count);
    for w in 0..worker_count {
        let offset = w * per_process;
        let users = per_process.min(options.count - offset);
        let sources = worker_sources(&options.sources, loopback, w, users);
        let node = w % nodes.len();
        let mut command = worker_command(&exe);
        command
            .args(["bench", "--api", &args.api, "--ws", &args.ws, "--tcp", &args.tcp, "--prefix", &args.prefix])
            .args(["--transport", if args.transport == Transport::Ws { "ws" } else { "tcp" }])
            .args(["connections", "--count", &users.to_string(), "--worker-offset", &offset.to_string()])
            .args(["--rooms", &options.rooms.to_string(), "--worker-node", &node.to_string()])
            .args(["--login-parallel", &options.login_parallel.to_string()])
            .args(["--open-parallel", &options.open_parallel.to_string()]);
        if !sources.is_empty() {
            let list: Vec<String> = sources.iter().map(IpAddr::to_string).collect();
            command.args(["--worker-source", &list.join(",")]);
        }
        // In a process group of its own: Ctrl-C on the terminal interrupts
        // the coordinator, which reports, and not the workers holding the
        // connections it measures (they end when it does).
        let mut child = command
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let counters = Arc::new(Counters::default());
        let (counters_, say, reported) = (counters.clone(), say.clone(), reported.clone());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("S ") {
                    counters_.read_status_line(&line);
                    reported.notify_waiters();
                } else if say.send((w, line)).is_err() {
                    return;
                }
            }
            let _ = say.send((w, "EXITED".to_owned()));
        });
        all.push(Worker { child, stdin, counters, node, users });
    }
    let mut workers = Workers { all, said, reported };
    // The load generator's workers are measured too (as `courier bench`): on
    // one machine they share the cores and the memory with the servers.
    let pids: Vec<u32> = pids.iter().copied().chain(workers.all.iter().filter_map(|w| w.child.id())).collect();

    let started = Instant::now();
    let phase_now = Arc::new(std::sync::Mutex::new("log in"));
    let set_phase = |name: &'static str| *phase_now.lock().unwrap_or_else(|p| p.into_inner()) = name;
    let sampler = Sampler {
        pids: pids.clone(),
        workers: workers.all.iter().map(|w| w.counters.clone()).collect(),
        phase: phase_now.clone(),
        started,
        asked: options.count as u64,
    };
    let sampling = CancellationToken::new();
    let timeline = tokio::spawn(sampler.run(sampling.clone()));

    let idle = memory_by_kind(&pids);
    let slab_idle = measure::slab_bytes();
    let mut phases = Vec::new();

    // An interrupt (Ctrl-C) during the log-in or open phase ends that phase
    // where it stands and the run with it; the report is still written, with
    // what was reached.
    let mut interrupted = None;

    // Log in.
    let clock = PhaseClock::start(&pids);
    tokio::select! {
        said = workers.all_say("LOGGED_IN") => { said?; }
        _ = stop.cancelled() => interrupted = Some("log in"),
    }
    phases.push(clock.finish(
        "log in",
        workers.total(|c| &c.logged),
        workers.total(|c| &c.login_failed),
        workers.total(|c| &c.login_retries),
    ));
    let logged_in = memory_by_kind(&pids);
    let connect_logged_in = connect_rss(&pids);

    // Open.
    let mut held_per_worker = vec![0; worker_count];
    if interrupted.is_none() {
        set_phase("open");
        let clock = PhaseClock::start(&pids);
        workers.tell_all("OPEN").await?;
        held_per_worker = tokio::select! {
            said = workers.all_say("READY") => said?.iter().map(|n| n.parse().unwrap_or(0)).collect(),
            _ = stop.cancelled() => {
                interrupted = Some("open");
                workers.all.iter().map(|w| w.counters.open_now()).collect()
            }
        };
        phases.push(clock.finish(
            "open",
            workers.total(|c| &c.opened),
            workers.total(|c| &c.open_failed),
            workers.total(|c| &c.open_retries),
        ));
    }
    let held: u64 = held_per_worker.iter().sum();
    let held_memory = memory_by_kind(&pids);
    let slab_held = measure::slab_bytes();
    let connect_held = connect_rss(&pids);
    set_phase("held");

    let mut probes = Vec::new();
    let mut kill = None;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    if interrupted.is_none() {
        let admin = if options.probe > 0 { crate::stages::endpoints(&args.metrics).await } else { Vec::new() };
        if options.probe > 0 {
            set_phase("probe");
            probes.push(probe(&mut workers, (target, &admin), &options, "while held", args.patience, &stop).await?);
            set_phase("held");
        }
        if let Some(node) = options.kill_node {
            set_phase("kill");
            kill = Some(kill_node(&mut workers, &options, &nodes, node, &pids, &mut phases, &stop).await?);
            if options.probe > 0 {
                set_phase("probe");
                let after = probe(&mut workers, (target, &admin), &options, "after the kill", args.patience, &stop);
                probes.push(after.await?);
            }
        }
        for result in workers.results().await? {
            for (reason, n) in result.errors {
                *errors.entry(reason).or_default() += n;
            }
        }
    }
    sampling.cancel();
    let timeline = timeline.await.unwrap_or_default();
    for mut worker in workers.all {
        drop(worker.stdin);
        if interrupted.is_some() {
            // A worker reads its stdin only between commands, and one
            // interrupted in a phase is still in it: ended, not waited for.
            let _ = worker.child.start_kill();
        }
        let _ = worker.child.wait().await;
    }

    let logins = phases.first().map_or(0, |p| p.done);
    let kinds: std::collections::BTreeSet<&String> = held_memory.keys().chain(idle.keys()).collect();
    let memory: Vec<KindMemory> = kinds
        .into_iter()
        .map(|kind| {
            let at = |m: &BTreeMap<String, (usize, u64)>| m.get(kind).copied().unwrap_or_default();
            let (idle, logged_in, held_now) = (at(&idle), at(&logged_in), at(&held_memory));
            KindMemory {
                kind: kind.clone(),
                processes: held_now.0,
                idle_bytes: idle.1,
                logged_in_bytes: logged_in.1,
                held_bytes: held_now.1,
                bytes_per_login: per(logged_in.1 as f64 - idle.1 as f64, logins),
                bytes_per_connection: per(held_now.1 as f64 - logged_in.1 as f64, held),
            }
        })
        .collect();
    let server_bytes_per_connection =
        memory.iter().filter(|m| SERVER_KINDS.contains(&m.kind.as_str())).map(|m| m.bytes_per_connection).sum();
    let kernel_slab_bytes_per_connection =
        slab_idle.zip(slab_held).map(|(before, after)| per(after as f64 - before as f64, held));
    let node_ports: Vec<Option<u16>> = nodes.iter().map(|n| port_of(n)).collect();
    let connect_processes = connect_held
        .iter()
        .map(|&(pid, ws_port, held_bytes)| {
            let connections: u64 = workers_on(&node_ports, ws_port, &held_per_worker, worker_count, nodes.len());
            let before = connect_logged_in.iter().find(|c| c.0 == pid).map_or(0, |c| c.2);
            ConnectProcess {
                pid,
                ws_port,
                connections,
                logged_in_bytes: before,
                held_bytes,
                bytes_per_connection: (connections > 0)
                    .then(|| (held_bytes as f64 - before as f64) / connections as f64),
            }
        })
        .collect();
    Ok(HoldReport {
        scenario: "connections",
        interrupted_in: interrupted,
        transport: args.transport,
        connections_asked: options.count,
        connections_held: held,
        workers: worker_count,
        connect_nodes: nodes.len(),
        rooms: options.rooms,
        phases,
        memory,
        server_bytes_per_connection,
        kernel_slab_bytes_per_connection,
        connect_processes,
        probes,
        kill,
        errors,
        timeline,
    })
}

/// A worker's command: at a lower priority (nice 10) where `nice` exists. The
/// load generator shares the cores with the servers it measures, and must not
/// take them from the servers when both want them.
fn worker_command(exe: &std::path::Path) -> tokio::process::Command {
    const NICE: &str = "/usr/bin/nice";
    if std::path::Path::new(NICE).exists() {
        let mut command = tokio::process::Command::new(NICE);
        command.args(["-n", "10"]).arg(exe);
        command
    } else {
        tokio::process::Command::new(exe)
    }
}

fn per(bytes: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { bytes / n as f64 }
}

/// The port of a `ws://host:port/…` URL or a `host:port` address.
fn port_of(node: &str) -> Option<u16> {
    let rest = node.split("://").last()?;
    rest.split('/').next()?.rsplit(':').next()?.parse().ok()
}

/// Connections held by the workers whose home node listens on `port`.
fn workers_on(node_ports: &[Option<u16>], port: Option<u16>, held: &[u64], workers: usize, nodes: usize) -> u64 {
    (0..workers).filter(|w| port.is_some() && node_ports[w % nodes] == port).map(|w| held[w]).sum()
}

/// Every connect process among `pids`: pid, WebSocket port, resident memory.
fn connect_rss(pids: &[u32]) -> Vec<(u32, Option<u16>, u64)> {
    pids.iter()
        .filter(|&&pid| measure::process_kind(pid) == "courier connect")
        .map(|&pid| {
            let port = measure::arg_value(pid, "--ws-addr").and_then(|a| port_of(&a));
            (pid, port, measure::rss_bytes(pid).unwrap_or(0))
        })
        .collect()
}

/// Times a phase and charges it the CPU of every process, by the kind each
/// process was when the phase began (a process killed in the phase keeps its
/// kind and what it spent before it died).
struct PhaseClock {
    started: Instant,
    cpu: Vec<(u32, String, f64)>,
}

impl PhaseClock {
    fn start(pids: &[u32]) -> Self {
        let cpu = pids
            .iter()
            .filter_map(|&pid| Some((pid, measure::process_kind(pid), measure::cpu_seconds(pid)?)))
            .collect();
        Self { started: Instant::now(), cpu }
    }

    fn finish(self, name: &'static str, done: u64, failed: u64, retried: u64) -> Phase {
        let seconds = self.started.elapsed().as_secs_f64();
        let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, kind, before) in self.cpu {
            let after = measure::cpu_seconds(pid).unwrap_or(before);
            *by_kind.entry(kind).or_default() += (after - before).max(0.0);
        }
        let mut cpu_s: Vec<(String, f64)> = by_kind.into_iter().filter(|(_, s)| *s >= 0.01).collect();
        cpu_s.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu_busy = cpu_s.iter().map(|(_, s)| s).sum::<f64>() / (seconds.max(1e-9) * cores);
        Phase { name, seconds, done, failed, retried, per_second: done as f64 / seconds.max(1e-9), cpu_s, cpu_busy }
    }
}

/// Samples the timeline every second and shows progress on the terminal.
struct Sampler {
    pids: Vec<u32>,
    workers: Vec<Arc<Counters>>,
    phase: Arc<std::sync::Mutex<&'static str>>,
    started: Instant,
    asked: u64,
}

impl Sampler {
    async fn run(self, stop: CancellationToken) -> Vec<Sample> {
        use std::io::IsTerminal as _;
        let terminal = std::io::stderr().is_terminal();
        let mut timeline = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let total = |pick: fn(&Counters) -> &AtomicU64| -> u64 {
                self.workers.iter().map(|c| pick(c).load(Ordering::Relaxed)).sum()
            };
            let sample = Sample {
                t_s: self.started.elapsed().as_secs_f64(),
                phase: *self.phase.lock().unwrap_or_else(|p| p.into_inner()),
                logged_in: total(|c| &c.logged),
                open: self.workers.iter().map(|c| c.open_now()).sum(),
                failed: total(|c| &c.login_failed) + total(|c| &c.open_failed),
                reconnects: total(|c| &c.reconnects),
                rss_bytes: memory_by_kind(&self.pids).into_iter().map(|(kind, (_, rss))| (kind, rss)).collect(),
                kernel_slab_bytes: measure::slab_bytes().unwrap_or(0),
            };
            let connect = sample.rss_bytes.get("courier connect").copied().unwrap_or(0);
            let line = format!(
                "{:>6.0} s  {:<6} logged in {:>8}/{}  open {:>8}  failed {:>5}  reconnects {:>6}  connect RSS {:>6} MiB",
                sample.t_s,
                sample.phase,
                sample.logged_in,
                self.asked,
                sample.open,
                sample.failed,
                sample.reconnects,
                connect >> 20,
            );
            if terminal {
                eprint!("\r{line}");
            } else if timeline.len() % 10 == 0 {
                eprintln!("{line}");
            }
            timeline.push(sample);
        }
        if terminal {
            eprintln!();
        }
        timeline
    }
}

/// Sends the probe messages and waits for their deliveries.
async fn probe(
    workers: &mut Workers,
    (target, admin): (&Target, &[String]),
    options: &Options,
    when: &'static str,
    patience: f64,
    stop: &CancellationToken,
) -> anyhow::Result<Probe> {
    // Whatever the last joins set going (room lists pushed to the members)
    // finishes first: the probe times messages on a cluster at rest.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(options.settle)) => {}
        _ = stop.cancelled() => {}
    }
    let counted_before = crate::stages::scrape(&target.http, admin).await;
    let before = workers.total(|c| &c.probe_received);
    let n = workers.all.len();
    // Spread the messages over the workers: worker w sends its share of each kind.
    let mut expected = 0;
    let (mut room_messages, mut private_messages) = (0u64, 0u64);
    for w in 0..n {
        let share = (options.probe / n + usize::from(w < options.probe % n)) as u64;
        let worker = &mut workers.all[w];
        worker.tell(&format!("PROBE {share}")).await?;
        room_messages += share;
        private_messages += share;
        // A room message reaches every member online (its sender too); the
        // room of the worker's j-th user has count / rooms members.
        let offset = w * options.per_process;
        for j in 0..share as usize {
            let room_index = (offset + j % worker.users.max(1)) % options.rooms as usize;
            let rooms = options.rooms as usize;
            expected += (options.count / rooms + usize::from(room_index < options.count % rooms)) as u64;
        }
        // A private message reaches its recipient, and the sender's own copy
        // its sender's connection.
        expected += 2 * share;
    }
    workers.all_say("PROBE_SENT").await?;
    // Deliveries, until all arrived or none for `patience`.
    let patience = Duration::from_secs_f64(patience.max(0.0));
    let mut last = (workers.total(|c| &c.probe_received), Instant::now());
    while last.0 - before < expected {
        let Some(left) = patience.checked_sub(last.1.elapsed()) else { break };
        if !workers.next_report(left, stop).await {
            break;
        }
        let now = workers.total(|c| &c.probe_received);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let mut histogram = measure::new_histogram();
    let mut send_failures = 0;
    for result in workers.results().await? {
        send_failures += result.probe_failed;
        for us in result.latencies_us {
            let _ = histogram.record(us.max(1));
        }
    }
    let counted = crate::stages::scrape(&target.http, admin).await;
    Ok(Probe {
        stages: (counted.endpoints > 0).then(|| counted.since(&counted_before)),
        when,
        room_messages,
        private_messages,
        send_failures,
        expected_deliveries: expected,
        delivered: workers.total(|c| &c.probe_received) - before,
        latency: Latency::of(&histogram),
    })
}

/// Kills a connect node and waits for its users to come back elsewhere.
async fn kill_node(
    workers: &mut Workers,
    options: &Options,
    nodes: &[String],
    node: usize,
    pids: &[u32],
    phases: &mut Vec<Phase>,
    stop: &CancellationToken,
) -> anyhow::Result<Kill> {
    let port = nodes.get(node).and_then(|n| port_of(n)).context("--kill-node is not one of --ws")?;
    let pid = connect_rss(pids)
        .into_iter()
        .find(|c| c.1 == Some(port))
        .map(|c| c.0)
        .with_context(|| format!("no connect process serves port {port}"))?;
    let on_node: u64 =
        workers.all.iter().filter(|w| w.node == node).map(|w| w.counters.opened.load(Ordering::Relaxed)).sum();
    let pinging = CancellationToken::new();
    let pings = options.redis.clone().map(|redis| tokio::spawn(redis_pings(redis, pinging.clone())));
    let before = workers.total(|c| &c.reconnects);
    let clock = PhaseClock::start(pids);
    eprintln!("killing connect node {node} (pid {pid}, {on_node} connections)");
    let killed = tokio::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().await?;
    if !killed.success() {
        bail!("could not kill pid {pid}");
    }
    let started = Instant::now();
    let mut all_back = None;
    let give_up = Duration::from_secs(300);
    loop {
        if workers.total(|c| &c.reconnects) - before >= on_node {
            all_back = Some(started.elapsed().as_secs_f64());
            break;
        }
        let Some(left) = give_up.checked_sub(started.elapsed()) else { break };
        if !workers.next_report(left, stop).await {
            break;
        }
    }
    let reconnected = workers.total(|c| &c.reconnects) - before;
    phases.push(clock.finish("reconnect", reconnected, on_node.saturating_sub(reconnected), 0));
    // The node's lease lapses and the reaper removes its entries meanwhile.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(options.reap_wait)) => {}
        _ = stop.cancelled() => {}
    }
    pinging.cancel();
    let (redis_pings, redis_ping) = match pings {
        Some(task) => {
            let histogram = task.await.context("the Redis probe")??;
            (histogram.len(), Some(Latency::of(&histogram)))
        }
        None => (0, None),
    };
    Ok(Kill {
        node,
        pid,
        connections_on_node: on_node,
        reconnected,
        seconds_to_reconnect_all: all_back,
        redis_pings,
        redis_ping,
    })
}

/// Times a Redis PING every 10 ms until `stop`: a reap that blocked Redis
/// shows as a long round trip.
async fn redis_pings(redis: String, stop: CancellationToken) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let addr = redis.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let mut stream =
        tokio::net::TcpStream::connect(&addr).await.with_context(|| format!("connecting to Redis at {addr}"))?;
    let mut histogram = measure::new_histogram();
    let mut reply = [0u8; 64];
    while !stop.is_cancelled() {
        let sent = Instant::now();
        stream.write_all(b"PING\r\n").await?;
        let n = stream.read(&mut reply).await?;
        if !reply[..n].starts_with(b"+PONG") {
            bail!("Redis answered PING with {:?}", String::from_utf8_lossy(&reply[..n]));
        }
        let _ = histogram.record((sent.elapsed().as_micros() as u64).max(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(histogram)
}

// --------------------------------------------------------------------- worker

/// A worker's share, as the coordinator started it.
#[derive(Debug, Clone)]
pub struct Share {
    pub offset: usize,
    pub count: usize,
    pub rooms: u64,
    pub node: usize,
    /// Source addresses, used in turn (none: the kernel picks).
    pub sources: Vec<IpAddr>,
    pub login_parallel: usize,
    pub open_parallel: usize,
}

/// What every connection task of a worker shares.
struct Holder {
    counters: Counters,
    reasons: Reasons,
    nodes: Vec<Target>,
    transport: Transport,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    run: String,
    latencies: std::sync::Mutex<Vec<u64>>,
    stop: CancellationToken,
}

impl Holder {
    /// The source address for the next connection, the worker's in turn.
    fn source(&self) -> Option<IpAddr> {
        let at = self.next_source.fetch_add(1, Ordering::Relaxed);
        (!self.sources.is_empty()).then(|| self.sources[at % self.sources.len()])
    }

    /// Records a probe delivery in `text`, if it is one of this run's.
    fn observe(&self, text: &str) {
        let Some(at) = text.find(PROBE) else { return };
        let mut parts = text[at + PROBE.len()..].split('|');
        if parts.next() != Some(self.run.as_str()) {
            return;
        }
        let Some(sent) = parts.next().and_then(|s| s.parse::<u64>().ok()) else { return };
        let latency = now_unix_us().saturating_sub(sent);
        self.latencies.lock().unwrap_or_else(|p| p.into_inner()).push(latency);
        self.counters.probe_received.fetch_add(1, Ordering::Relaxed);
    }
}

fn now_unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Runs one worker: logs its users in, opens their connections on `OPEN`,
/// sends probes on `PROBE n`, reports on `REPORT`, and holds everything until
/// its stdin closes.
pub async fn worker(args: &crate::BenchArgs, target: &Target, share: Share) -> anyhow::Result<()> {
    let nodes: Vec<Target> = args
        .ws
        .split(',')
        .zip(args.tcp.split(',').cycle())
        .map(|(ws, tcp)| Target { ws: ws.to_owned(), tcp: tcp.to_owned(), ..target.clone() })
        .collect();
    // The probe marker names the run by the prefix, which every worker shares.
    let me = Arc::new(Holder {
        counters: Counters::default(),
        reasons: Reasons::default(),
        nodes,
        transport: args.transport,
        sources: share.sources.clone(),
        next_source: AtomicUsize::new(0),
        run: args.prefix.clone(),
        latencies: Default::default(),
        stop: CancellationToken::new(),
    });
    let status = {
        let me = me.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !me.stop.is_cancelled() {
                tick.tick().await;
                println!("{}", me.counters.status_line());
            }
        })
    };
    let users = log_in(&me, target, &args.prefix, &share).await;
    println!("{}", me.counters.status_line());
    println!("LOGGED_IN");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let (mut probe_sent, mut probe_failed) = (0u64, 0u64);
    while let Ok(Some(command)) = stdin.next_line().await {
        let mut words = command.split_whitespace();
        match words.next() {
            Some("OPEN") => {
                open_all(&me, &users, &share).await;
                println!("{}", me.counters.status_line());
                println!("READY {}", me.counters.opened.load(Ordering::Relaxed));
            }
            Some("PROBE") => {
                let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let (ok, failed) = send_probes(&me, target, &users, &share, n).await;
                (probe_sent, probe_failed) = (probe_sent + ok, probe_failed + failed);
                println!("PROBE_SENT {ok} {failed}");
            }
            Some("REPORT") => {
                let latencies_us = std::mem::take(&mut *me.latencies.lock().unwrap_or_else(|p| p.into_inner()));
                let result = WorkerResult { latencies_us, probe_sent, probe_failed, errors: me.reasons.snapshot() };
                (probe_sent, probe_failed) = (0, 0);
                println!("{}", me.counters.status_line());
                println!("RESULT {}", serde_json::to_string(&result)?);
            }
            _ => {}
        }
    }
    me.stop.cancel();
    status.abort();
    Ok(())
}

/// Logs the worker's users in, `login_parallel` at a time, retrying what the
/// server refused for being busy or what failed on the way (for over a minute:
/// "busy" is the password queue's back-pressure, and a load
/// generator at full speed meets it all the time). A user that could not be
/// logged in is `None` (counted and its reason noted).
async fn log_in(me: &Arc<Holder>, target: &Target, prefix: &str, share: &Share) -> Vec<Option<User>> {
    futures_util::stream::iter(share.offset..share.offset + share.count)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            async move {
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                for attempt in 0..LOGIN_ATTEMPTS {
                    match target.session(&name).await {
                        Ok(user) => {
                            me.counters.logged.fetch_add(1, Ordering::Relaxed);
                            return Some(user);
                        }
                        Err(e) => {
                            let why = format!("log in: {e:#}");
                            let retry = why.contains("busy") || why.contains("try again") || e.is::<reqwest::Error>();
                            if !retry || attempt + 1 == LOGIN_ATTEMPTS {
                                me.reasons.note(why);
                                me.counters.login_failed.fetch_add(1, Ordering::Relaxed);
                                return None;
                            }
                            me.counters.login_retries.fetch_add(1, Ordering::Relaxed);
                            backoff.sleep().await;
                        }
                    }
                }
                None
            }
        })
        .buffered(share.login_parallel.max(1))
        .collect()
        .await
}

/// Tries at one login: backing off from 0.1 s to 5 s, 20 tries span over a minute.
const LOGIN_ATTEMPTS: u32 = 20;

/// The room of user `i` (global index).
fn room_of(i: usize, rooms: u64) -> u64 {
    1 + i as u64 % rooms.max(1)
}

/// Opens every logged-in user's connection on the worker's home node,
/// `open_parallel` at a time, and leaves each held by its own task. Returns
/// once every one is open or has failed.
async fn open_all(me: &Arc<Holder>, users: &[Option<User>], share: &Share) {
    let permits = Arc::new(Semaphore::new(share.open_parallel.max(1)));
    let settled = Arc::new(Semaphore::new(0));
    let mut expected = 0u32;
    for (j, user) in users.iter().enumerate() {
        let Some(user) = user.clone() else { continue };
        expected += 1;
        let (me, permits, settled) = (me.clone(), permits.clone(), settled.clone());
        let room = room_of(share.offset + j, share.rooms);
        let node = share.node % me.nodes.len();
        tokio::spawn(async move {
            let opened = match permits.acquire_owned().await {
                // Boxed, as every await of a handshake below: a held
                // connection's task would otherwise stay the size of the
                // handshake's state for as long as it holds.
                Ok(_permit) => Box::pin(open_with_retries(&me, &user, room, node)).await,
                Err(_) => None,
            };
            if opened.is_some() {
                me.counters.opened.fetch_add(1, Ordering::Relaxed);
            }
            settled.add_permits(1);
            if let Some(connection) = opened {
                hold(me, user, room, (node, j), connection).await;
            }
        });
    }
    let _ = settled.acquire_many(expected).await;
}

/// A few attempts at opening one connection; `None` (counted, reason noted)
/// when none worked.
async fn open_with_retries(me: &Holder, user: &User, room: u64, node: usize) -> Option<(FrameSink, FrameStream)> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    for attempt in 0..4 {
        match clients::open(&me.nodes[node], me.transport, me.source(), user, room).await {
            Ok(connection) => return Some(connection),
            Err(e) if attempt == 3 => {
                me.reasons.note(format!("open: {e:#}"));
                me.counters.open_failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                me.counters.open_retries.fetch_add(1, Ordering::Relaxed);
                backoff.sleep().await;
            }
        }
    }
    None
}

/// Holds one connection: reads what arrives (probe deliveries are timed) and,
/// when the server closes it, reconnects to another node until that works.
async fn hold(
    me: Arc<Holder>,
    user: User,
    room: u64,
    (mut node, spread): (usize, usize),
    connection: (FrameSink, FrameStream),
) {
    let mut connection = Some(connection);
    loop {
        let Some((sink, mut stream)) = connection.take() else { return };
        loop {
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(text)) => me.observe(&text),
                    _ => break,
                },
                _ = me.stop.cancelled() => return,
            }
        }
        // Both halves, so the old socket's descriptor is closed before a new
        // one is opened: a worker's whole share reconnecting at once would
        // otherwise need twice its descriptors.
        drop((sink, stream));
        me.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut tried = false;
        while connection.is_none() {
            // The first try goes to one of the other nodes picked by the
            // user (a dead node's users spread over all the others rather than
            // all landing on the next one), later ones to the next node.
            let step = if tried { 1 } else { 1 + spread % me.nodes.len().saturating_sub(1).max(1) };
            tried = true;
            node = (node + step) % me.nodes.len();
            match Box::pin(clients::open(&me.nodes[node], me.transport, me.source(), &user, room)).await {
                Ok(reopened) => {
                    me.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    connection = Some(reopened);
                }
                Err(e) => {
                    me.reasons.note(format!("reconnect: {e:#}"));
                    if !backoff.wait(&me.stop).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Sends `n` room messages (user j to its own room) and `n` private messages
/// (user j to user j+1 of this worker), 20 ms apart, their bodies stamped with
/// the time they were sent.
async fn send_probes(me: &Holder, target: &Target, users: &[Option<User>], share: &Share, n: usize) -> (u64, u64) {
    let live: Vec<(usize, &User)> = users.iter().enumerate().filter_map(|(j, u)| u.as_ref().map(|u| (j, u))).collect();
    let (mut ok, mut failed) = (0, 0);
    if live.len() < 2 {
        return (0, 2 * n as u64);
    }
    for k in 0..n {
        let (j, sender) = live[k % live.len()];
        let (_, recipient) = live[(k + 1) % live.len()];
        let room = room_of(share.offset + j, share.rooms);
        let body = |me: &Holder| format!("{PROBE}{}|{}|", me.run, now_unix_us());
        match target.http_send(sender, room, None, &body(me)).await {
            Ok(()) => ok += 1,
            Err(e) => {
                me.reasons.note(format!("probe: {e}"));
                failed += 1;
            }
        }
        let sent = match target.user_id(recipient).await {
            Ok(to) => target.http_send(sender, room, Some(to), &body(me)).await,
            Err(e) => Err(format!("{e:#}")),
        };
        match sent {
            Ok(()) => ok += 1,
            Err(e) => {
                me.reasons.note(format!("probe: {e}"));
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed)
}

// ------------------------------------------------------------------- printing

/// The report as tables on stdout.
pub fn print(r: &HoldReport) {
    println!(
        "scenario connections  transport {:?}  held {} of {}  workers {}  connect nodes {}  rooms {}",
        r.transport, r.connections_held, r.connections_asked, r.workers, r.connect_nodes, r.rooms
    );
    if let Some(phase) = r.interrupted_in {
        println!("interrupted during {phase}: the figures are what it had reached");
    }
    println!(
        "{:<11}{:>9}{:>10}{:>8}{:>8}{:>10}{:>6}  CPU seconds by process",
        "phase", "seconds", "done", "failed", "retried", "per s", "busy"
    );
    for p in &r.phases {
        let cpu: Vec<String> = p.cpu_s.iter().map(|(kind, s)| format!("{kind} {s:.1}")).collect();
        println!(
            "{:<11}{:>9.1}{:>10}{:>8}{:>8}{:>10.0}{:>5.0}%  {}",
            p.name,
            p.seconds,
            p.done,
            p.failed,
            p.retried,
            p.per_second,
            p.cpu_busy * 100.0,
            cpu.join(" · ")
        );
    }
    println!(
        "{:<18}{:>4}{:>11}{:>11}{:>11}{:>12}{:>14}",
        "memory (MiB)", "n", "idle", "logged in", "held", "B/login", "B/connection"
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for m in &r.memory {
        println!(
            "{:<18}{:>4}{:>11.1}{:>11.1}{:>11.1}{:>12.0}{:>14.0}",
            m.kind,
            m.processes,
            mib(m.idle_bytes),
            mib(m.logged_in_bytes),
            mib(m.held_bytes),
            m.bytes_per_login,
            m.bytes_per_connection
        );
    }
    println!(
        "server (connect + logic + Redis + task) per connection: {:.0} bytes ({:.2} KiB)",
        r.server_bytes_per_connection,
        r.server_bytes_per_connection / 1024.0
    );
    if let Some(slab) = r.kernel_slab_bytes_per_connection {
        println!("kernel slab per connection (both ends): {slab:.0} bytes");
    }
    let per_node: Vec<f64> = r.connect_processes.iter().filter_map(|c| c.bytes_per_connection).collect();
    if !per_node.is_empty() {
        let (low, high) = per_node.iter().fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
        println!(
            "connect RSS per connection, by process: {low:.0} to {high:.0} bytes over {} processes",
            per_node.len()
        );
    }
    for p in &r.probes {
        let l = &p.latency;
        println!(
            "probe {}: {} room + {} private messages ({} failed), {} of {} deliveries; latency ms p50 {:.2} p99 {:.2} max {:.2}",
            p.when,
            p.room_messages,
            p.private_messages,
            p.send_failures,
            p.delivered,
            p.expected_deliveries,
            l.p50_ms,
            l.p99_ms,
            l.max_ms
        );
        for s in p.stages.iter().flat_map(|b| &b.stages) {
            println!("  since admission, {:<10} p50 {:>8.2} ms  p99 {:>8.2} ms", s.stage, s.p50_ms, s.p99_ms);
        }
    }
    if let Some(k) = &r.kill {
        let back = k.seconds_to_reconnect_all.map_or("not all".to_owned(), |s| format!("{s:.1} s"));
        println!(
            "killed node {} (pid {}): {} of {} connections reconnected elsewhere in {back}",
            k.node, k.pid, k.reconnected, k.connections_on_node
        );
        if let Some(l) = &k.redis_ping {
            println!(
                "Redis PING meanwhile ({} pings): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                k.redis_pings, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
    }
    for (reason, n) in &r.errors {
        println!("error ×{n}: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_workers_get_distinct_sources_none_carrying_more_than_its_share() {
        let per_worker = 18_182;
        let mut seen = std::collections::HashSet::new();
        for w in 0..55 {
            let sources = worker_sources(&[], true, w, per_worker);
            assert_eq!(sources.len(), 3, "18,182 connections need three addresses of 7,000");
            assert!(per_worker.div_ceil(sources.len()) <= PER_SOURCE);
            for source in sources {
                assert!(source.is_loopback());
                assert!(seen.insert(source), "{source} handed to two workers");
            }
        }
        assert!(worker_sources(&[], false, 0, per_worker).is_empty(), "off loopback the kernel picks");
    }

    #[test]
    fn given_sources_are_handed_out_in_turn() {
        let given: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        assert_eq!(worker_sources(&given, false, 0, 10_000), given[0..2]);
        assert_eq!(worker_sources(&given, false, 1, 10_000), given[2..4]);
        assert_eq!(worker_sources(&given, false, 2, 5_000), given[2..3]);
    }
}
