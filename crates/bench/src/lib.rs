//! `courier bench`: drives a running Courier through its public protocol and
//! reports what a user would notice: loss, duplicates, reordering, throughput and
//! latency, plus the servers' CPU time per message and memory per connection.
//!
//! Latency is timed from when each send was *due*, not when it went out: in the
//! fixed-rate mode a sender that falls behind sends late, and the lateness counts
//! (so a stalled server shows as latency rather than as a lower send rate). Flat
//! out, each connection keeps up to `--window` sends in flight.
//!
//! Scenarios:
//! - `private`: users in pairs, each sending to its partner; order and loss
//!   checked at the recipient.
//! - `room`: N members in one room, S of them sending; every member receives.
//! - `connections`: N idle authenticated connections of distinct users, spread
//!   over worker processes when N exceeds one process's file limit; reports the
//!   servers' resident memory per connection.
//! - `logins`: a burst of registrations then logins; reports the servers'
//!   resident memory idle, at the peak and once settled (password hashing's
//!   memory is the cost being watched).
//!
//! `private` and `room` also report the servers' own breakdown of the run's
//! latency by stage, scraped from their `/metrics` (see [`stages`]).

mod clients;
mod hold;
mod logins;
mod measure;
mod stages;

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use clients::{FrameSink, FrameStream, Target, Transport, User};
use measure::{Latency, Ledger, Receiver};

/// Options shared by every scenario.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// API base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// WebSocket URL, or several comma-separated (clients take them in turn).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:7000/ws")]
    pub ws: String,
    /// TCP address, or several comma-separated (clients take them in turn).
    #[arg(long, global = true, default_value = "127.0.0.1:7001")]
    pub tcp: String,
    /// Socket transport of the clients.
    #[arg(long, global = true, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// How messages are sent: over the socket (op 7) or HTTP (/push/*).
    #[arg(long, global = true, value_enum, default_value = "socket")]
    pub send_via: SendVia,
    /// Seconds of sending.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Total messages per second across senders; 0 sends flat out.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Message body size in bytes.
    #[arg(long, global = true, default_value_t = 100)]
    pub size: usize,
    /// Sends in flight per connection when flat out.
    #[arg(long, global = true, default_value_t = 32)]
    pub window: usize,
    /// Prefix of the bench users' names.
    #[arg(long, global = true, default_value = "bench")]
    pub prefix: String,
    /// Server processes to measure (default: every courier, java, postgres and
    /// redis-server process); repeatable or comma-separated.
    #[arg(long = "pid", global = true, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Admin endpoints (`host:port`) whose `/metrics` give the per-stage
    /// breakdown; default: every admin port 9100–9199 on loopback that
    /// answers (the standalone's and the local cluster's).
    #[arg(long = "metrics", global = true, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Once sending is over, seconds without a delivery after which what has
    /// not arrived counts as lost (a fault run gives the cluster time to
    /// recover).
    #[arg(long, global = true, default_value_t = 5.0)]
    pub patience: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendVia {
    Socket,
    Http,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Users in pairs, each sending to its partner.
    Private {
        /// Number of users (rounded up to even).
        #[arg(long, default_value_t = 100)]
        users: usize,
    },
    /// One room: every member receives what the senders send.
    Room {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// The room id used.
        #[arg(long, default_value_t = 4242)]
        room: u64,
    },
    /// Register users, then log them in again, many at once, and report the
    /// servers' resident memory idle, at the peak and once settled.
    Logins {
        #[arg(long, default_value_t = 400)]
        users: usize,
        /// Registrations (then logins) in flight at once.
        #[arg(long, default_value_t = 40)]
        parallel: usize,
        /// Seconds to wait after the burst before reading the settled memory.
        #[arg(long, default_value_t = 5.0)]
        settle: f64,
    },
    /// Hold idle authenticated connections, over as many worker processes
    /// as needed, and report per phase the time, failures and CPU, and the
    /// servers' memory per connection by kind of process.
    Connections {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Most connections one bench process holds (the open-file limit is per process).
        #[arg(long, default_value_t = 15_000)]
        per_process: usize,
        /// Source addresses, handed to the workers in turn, each worker using
        /// as many as keep every address under 7,000 connections (see
        /// `hold::PER_SOURCE`); default on loopback: 127.0.s.(w+1) for worker w.
        #[arg(long, value_delimiter = ',')]
        sources: Vec<IpAddr>,
        /// Rooms the users are spread over (user i joins room 1 + i % rooms). One
        /// room of every user is the worst case: each join pushes the member list
        /// to everyone.
        #[arg(long, default_value_t = 1)]
        rooms: u64,
        /// Registrations or logins in flight per worker.
        #[arg(long, default_value_t = 8)]
        login_parallel: usize,
        /// Connection opens in flight per worker.
        #[arg(long, default_value_t = 32)]
        open_parallel: usize,
        /// Room messages, and as many private messages, sent over HTTP once
        /// everything is held (and again after --kill-node); their latency is
        /// timed at the receivers.
        #[arg(long, default_value_t = 0)]
        probe: usize,
        /// Kill this connect node (its index in --ws) with SIGKILL once
        /// everything is held, and time its users' reconnection to the next node.
        #[arg(long)]
        kill_node: Option<usize>,
        /// Redis to time PINGs on while the killed node's entries are reaped
        /// (`redis://host:port` or `host:port`).
        #[arg(long)]
        redis: Option<String>,
        /// Seconds to keep timing Redis after the killed node's users are back
        /// (the node's lease has to lapse and the reaper to run meanwhile).
        #[arg(long, default_value_t = 30.0)]
        reap_wait: f64,
        /// Seconds to wait before each probe, for what the last joins set going
        /// (room member lists pushed to every member) to finish.
        #[arg(long, default_value_t = 10.0)]
        settle: f64,
        /// Internal: run as a worker holding users offset..offset+count.
        #[arg(long, hide = true)]
        worker_offset: Option<usize>,
        /// Internal: the worker's source addresses.
        #[arg(long, hide = true, value_delimiter = ',')]
        worker_source: Vec<IpAddr>,
        /// Internal: the worker's home node (index into --ws).
        #[arg(long, hide = true, default_value_t = 0)]
        worker_node: usize,
    },
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub transport: Transport,
    pub send_via: SendVia,
    pub connections: usize,
    pub senders: usize,
    pub rate_target: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    /// Acknowledged messages some recipient never received, counted one by one.
    pub lost: u64,
    /// Deliveries of sends whose acknowledgement never reached the bench (a
    /// tier killed mid-request): neither promised nor a loss.
    pub unacknowledged_delivered: u64,
    /// Connections the server closed that reconnected (to the next node) and
    /// resumed.
    pub reconnects: u64,
    /// Why sends were refused (the server's words, or the request's failure),
    /// with how often; the first 20 reasons.
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub messages_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    pub server_pids: Vec<u32>,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_message: f64,
    pub server_cpu_us_per_delivery: f64,
    /// Server CPU seconds during the run by kind of process (`courier
    /// logic`, `java`, `postgres`, …), busiest first.
    pub server_cpu_by_process: Vec<(String, f64)>,
    /// The servers' latency by stage, when their metrics could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<stages::Breakdown>,
}

/// Counters the progress line reads while the run goes.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    reconnects: AtomicU64,
    /// Why sends were refused, and how often.
    refusals: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Progress {
    fn refused(&self, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = refusals.get_mut(reason) {
            *count += 1;
        } else if refusals.len() < 20 {
            refusals.insert(reason.to_owned(), 1);
        }
    }
}

/// What each connection's reader hands back at the end.
struct ReaderResult {
    receiver: Receiver,
    histogram: Histogram<u64>,
}

/// Runs a bench command.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    raise_file_limit();
    let target = Target {
        api: args.api.trim_end_matches('/').to_owned(),
        ws: args.ws.clone(),
        tcp: args.tcp.clone(),
        http: reqwest::Client::builder().pool_max_idle_per_host(256).build()?,
    };
    let report = match &args.scenario {
        Scenario::Private { users } => traffic(&args, &target, Shape::Private { users: users.div_ceil(2) * 2 }).await?,
        Scenario::Room { members, senders, room } => {
            if senders > members {
                bail!("--senders ({senders}) cannot exceed --members ({members})");
            }
            traffic(&args, &target, Shape::Room { members: *members, senders: *senders, room: *room }).await?
        }
        Scenario::Logins { users, parallel, settle } => {
            let pids = if args.pids.is_empty() { measure::find_server_pids() } else { args.pids.clone() };
            let settle = Duration::from_secs_f64(settle.max(0.0));
            let report = logins::run(&target, &args.prefix, *users, *parallel, settle, pids).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                logins::print(&report);
            }
            return Ok(());
        }
        Scenario::Connections {
            count,
            per_process,
            sources,
            rooms,
            login_parallel,
            open_parallel,
            probe,
            kill_node,
            redis,
            reap_wait,
            settle,
            worker_offset,
            worker_source,
            worker_node,
        } => {
            let rooms = (*rooms).max(1);
            if let Some(offset) = worker_offset {
                let share = hold::Share {
                    offset: *offset,
                    count: *count,
                    rooms,
                    node: *worker_node,
                    sources: worker_source.clone(),
                    login_parallel: *login_parallel,
                    open_parallel: *open_parallel,
                };
                return hold::worker(&args, &target, share).await;
            }
            let options = hold::Options {
                count: *count,
                per_process: *per_process,
                sources: sources.clone(),
                rooms,
                login_parallel: *login_parallel,
                open_parallel: *open_parallel,
                probe: *probe,
                kill_node: *kill_node,
                redis: redis.clone(),
                reap_wait: *reap_wait,
                settle: *settle,
            };
            let pids = if args.pids.is_empty() { measure::find_server_pids() } else { args.pids.clone() };
            let stop = CancellationToken::new();
            let interrupt = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    interrupt.cancel();
                }
            });
            let report = hold::run(&args, &target, options, pids, stop).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                hold::print(&report);
            }
            return Ok(());
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn raise_file_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: could not raise the open-file limit: {e}");
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Private { users: usize },
    Room { members: usize, senders: usize, room: u64 },
}

/// The `private` and `room` scenarios.
async fn traffic(args: &BenchArgs, target: &Target, shape: Shape) -> anyhow::Result<Report> {
    let (connections, senders, room) = match shape {
        Shape::Private { users } => (users, users, 1),
        Shape::Room { members, senders, room } => (members, senders, room),
    };
    let run = format!("{:x}", courier_ids::now_unix_ms());
    eprintln!("logging in {connections} users…");
    let users = target.users(&args.prefix, 0, connections, 8).await?;
    let user_ids: Arc<Vec<u64>> = Arc::new(users.iter().map(|u| u.id).collect());
    eprintln!("opening {connections} {:?} connections…", args.transport);
    // Several connect nodes (`--ws a,b,…`, `--tcp a,b,…`): users take them in
    // turn, so partners (users 2k and 2k+1) sit on different nodes.
    let nodes: Arc<Vec<Target>> = Arc::new(
        args.ws
            .split(',')
            .zip(args.tcp.split(',').cycle())
            .map(|(ws, tcp)| Target { ws: ws.to_owned(), tcp: tcp.to_owned(), ..target.clone() })
            .collect(),
    );
    let mut sockets = Vec::with_capacity(connections);
    for (i, user) in users.iter().enumerate() {
        sockets.push(clients::open(&nodes[i % nodes.len()], args.transport, None, user, room).await?);
    }

    let pids = if args.pids.is_empty() { measure::find_server_pids() } else { args.pids.clone() };
    let admin = stages::endpoints(&args.metrics).await;
    let counted_before = stages::scrape(&target.http, &admin).await;
    let progress = Arc::new(Progress::default());
    let ledger = Arc::new(Ledger::new(senders));
    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop_reading = CancellationToken::new();
    let start = Instant::now();
    let send_for = Duration::from_secs_f64(args.duration);
    let per_sender_rate = if args.rate > 0.0 { args.rate / senders as f64 } else { 0.0 };
    let cpu_before = measure::total_cpu(&pids);
    let kinds_before = measure::cpu_by_kind(&pids);

    let mut readers = Vec::with_capacity(connections);
    let mut writers = Vec::with_capacity(senders);
    for (index, (sink, stream)) in sockets.into_iter().enumerate() {
        let window = Arc::new(Semaphore::new(args.window.max(1)));
        let op = if matches!(shape, Shape::Private { .. }) { 2 } else { 3 };
        let reader = Reader {
            run: run.clone(),
            op,
            me: users[index].clone(),
            index,
            room,
            start,
            progress: progress.clone(),
            ledger: ledger.clone(),
            window: window.clone(),
            stop: stop_reading.clone(),
            nodes: nodes.clone(),
            transport: args.transport,
        };
        readers.push(tokio::spawn(reader.run(stream)));
        if index < senders {
            let to_user = match shape {
                Shape::Private { .. } => Some(user_ids[index ^ 1]),
                Shape::Room { .. } => None,
            };
            let plan = SendPlan {
                run: run.clone(),
                index,
                room,
                to_user,
                size: args.size,
                rate: per_sender_rate,
                start,
                until: send_for,
            };
            let user = users[index].clone();
            writers.push(match args.send_via {
                SendVia::Socket => {
                    tokio::spawn(socket_send_loop(sink, plan, window, progress.clone(), stop_sending.clone()))
                }
                SendVia::Http => {
                    let (progress, ledger, stop) = (progress.clone(), ledger.clone(), stop_sending.clone());
                    tokio::spawn(http_send_loop(target.clone(), user, plan, progress, ledger, stop))
                }
            });
        } else {
            // Keep the sink alive so the connection stays open.
            writers.push(tokio::spawn(async move {
                let _sink = sink;
                std::future::pending::<anyhow::Result<()>>().await
            }));
        }
    }

    let show = std::io::stderr().is_terminal();
    let fanout = match shape {
        Shape::Private { .. } => 1,
        Shape::Room { members, .. } => members as u64,
    };
    // Send for the duration, then let deliveries drain for as long as they keep
    // coming (a backlog is latency, not loss): stop once everything is in, or
    // nothing arrived for `--patience` seconds, or after 5 minutes.
    let mut last_progress = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = start.elapsed();
        if elapsed >= send_for {
            stop_sending.store(true, Ordering::Relaxed);
        }
        if show {
            print_progress(&progress, elapsed, send_for);
        }
        let acked = progress.acked.load(Ordering::Relaxed);
        let delivered = progress.delivered.load(Ordering::Relaxed);
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        }
        let answered = acked + progress.failed.load(Ordering::Relaxed);
        let settled = answered >= progress.sent.load(Ordering::Relaxed) && delivered >= acked * fanout;
        let stalled = last_progress.1.elapsed() > Duration::from_secs_f64(args.patience);
        if elapsed >= send_for && (settled || stalled) || elapsed >= send_for + Duration::from_secs(300) {
            break;
        }
    }
    if show {
        eprintln!();
    }
    let active = start.elapsed().min(send_for).as_secs_f64();
    // Deliveries per second over the time until the last one arrived.
    let delivering = last_progress.1.duration_since(start).as_secs_f64().max(1e-9);
    let cpu = (measure::total_cpu(&pids) - cpu_before).max(0.0);
    let by_process = measure::cpu_spent(&kinds_before, &measure::cpu_by_kind(&pids));
    let counted = stages::scrape(&target.http, &admin).await;
    let breakdown = (counted.endpoints > 0).then(|| counted.since(&counted_before));
    for writer in &writers {
        writer.abort();
    }
    stop_reading.cancel();
    let mut histogram = measure::new_histogram();
    let (mut delivered, mut duplicated, mut out_of_order) = (0, 0, 0);
    let (mut lost, mut unacknowledged_delivered) = (0, 0);
    for (index, reader) in readers.into_iter().enumerate() {
        let Ok(result) = reader.await else { continue };
        let _ = histogram.add(&result.histogram);
        // Whose messages this connection receives.
        let from = match shape {
            Shape::Private { .. } => index ^ 1..(index ^ 1) + 1,
            Shape::Room { .. } => 0..senders,
        };
        let (acked_delivered, acked_lost) = ledger.check(&result.receiver, from);
        lost += acked_lost;
        unacknowledged_delivered += result.receiver.unique.saturating_sub(acked_delivered);
        delivered += result.receiver.unique;
        duplicated += result.receiver.duplicated;
        out_of_order += result.receiver.out_of_order;
    }
    let acknowledged = progress.acked.load(Ordering::Relaxed);
    let expected = acknowledged * fanout;
    Ok(Report {
        scenario: match shape {
            Shape::Private { .. } => "private".into(),
            Shape::Room { .. } => "room".into(),
        },
        transport: args.transport,
        send_via: args.send_via,
        connections,
        senders,
        rate_target: args.rate,
        duration_s: active,
        sent: progress.sent.load(Ordering::Relaxed),
        acknowledged,
        failed: progress.failed.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered,
        lost,
        unacknowledged_delivered,
        reconnects: progress.reconnects.load(Ordering::Relaxed),
        refusals: std::mem::take(&mut *progress.refusals.lock().unwrap_or_else(|p| p.into_inner())),
        duplicated,
        out_of_order,
        messages_per_s: acknowledged as f64 / active.max(1e-9),
        deliveries_per_s: delivered as f64 / delivering,
        latency: Latency::of(&histogram),
        server_pids: pids,
        server_cpu_s: cpu,
        server_cpu_us_per_message: cpu * 1e6 / acknowledged.max(1) as f64,
        server_cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        server_cpu_by_process: by_process,
        stages: breakdown,
    })
}

/// What one sender sends.
#[derive(Debug, Clone)]
struct SendPlan {
    run: String,
    index: usize,
    room: u64,
    to_user: Option<u64>,
    size: usize,
    /// Messages per second; 0 flat out.
    rate: f64,
    start: Instant,
    until: Duration,
}

impl SendPlan {
    /// Waits until message `seq` is due and returns its body (stamped with
    /// when it was due), or `None` once the run's sending time is over.
    async fn next_body(&self, seq: u64, stop: &AtomicBool) -> Option<String> {
        let due = self.due(seq);
        if due >= self.until || stop.load(Ordering::Relaxed) {
            return None;
        }
        tokio::time::sleep_until((self.start + due).into()).await;
        Some(measure::encode_body(&self.run, self.index, seq, due, self.size))
    }

    /// When message `seq` (1-based) is due, relative to the start; flat out, now.
    fn due(&self, seq: u64) -> Duration {
        if self.rate > 0.0 {
            // Stagger senders over the first interval so they do not fire together.
            let offset = (self.index as f64 % 1000.0) / 1000.0 / self.rate;
            Duration::from_secs_f64((seq - 1) as f64 / self.rate + offset)
        } else {
            self.start.elapsed()
        }
    }
}

async fn socket_send_loop(
    mut sink: FrameSink,
    plan: SendPlan,
    window: Arc<Semaphore>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    for seq in 1.. {
        let Some(body) = plan.next_body(seq, &stop).await else { break };
        window.acquire().await?.forget();
        let client_msg_id = format!("{}-{}-{seq}", plan.run, plan.index);
        let mut frame = json!({"op": 7, "roomId": plan.room, "msg": body, "clientMsgId": client_msg_id});
        if let Some(to) = plan.to_user {
            frame["toUserId"] = to.into();
        }
        sink.send(frame.to_string()).await?;
        progress.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Keep the connection open while deliveries drain.
    std::future::pending::<()>().await;
    Ok(())
}

async fn http_send_loop(
    target: Target,
    user: User,
    plan: SendPlan,
    progress: Arc<Progress>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    for seq in 1.. {
        let Some(body) = plan.next_body(seq, &stop).await else { break };
        progress.sent.fetch_add(1, Ordering::Relaxed);
        // One request at a time per sender: concurrent HTTP requests could be
        // admitted out of order.
        match target.http_send(&user, plan.room, plan.to_user, &body).await {
            Ok(()) => {
                ledger.ack(plan.index, seq);
                progress.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(refusal) => {
                progress.refused(&refusal);
                if refusal.contains("Session error") {
                    // The session is gone (Redis came back empty): log in again.
                    let _ = user.log_in_again(&target).await;
                }
            }
        }
    }
    Ok(())
}

/// One connection's reader: counts acknowledgements and deliveries, and
/// when the server closes the connection (a connect node killed or stopping)
/// reconnects to the next node and resumes every stream after the last
/// message it saw, as a real client does, until the run ends.
struct Reader {
    run: String,
    /// The message op this scenario delivers (2 private, 3 room).
    op: i64,
    me: User,
    /// This connection's place among the clients (its node is `index`).
    index: usize,
    room: u64,
    start: Instant,
    progress: Arc<Progress>,
    ledger: Arc<Ledger>,
    window: Arc<Semaphore>,
    stop: CancellationToken,
    nodes: Arc<Vec<Target>>,
    transport: Transport,
}

impl Reader {
    async fn run(self, mut stream: FrameStream) -> ReaderResult {
        let mut result = ReaderResult { receiver: Receiver::default(), histogram: measure::new_histogram() };
        // The last position seen per stream (`room:…`, `user:…`): epoch, seq.
        let mut positions: std::collections::HashMap<String, (String, u64)> = std::collections::HashMap::new();
        let mut held = Vec::new(); // sinks of reconnections, kept open
        let mut attempt = 0;
        loop {
            let text = tokio::select! {
                _ = self.stop.cancelled() => break,
                next = stream.next() => match next {
                    Some(Ok(text)) => text,
                    _ => {
                        match self.reconnect(&positions, &mut attempt).await {
                            Some((sink, again)) => {
                                held.push(sink);
                                stream = again;
                                continue;
                            }
                            None => break,
                        }
                    }
                },
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
            if let (Some(name), Some(seq)) = (frame["stream"].as_str(), frame["seq"].as_u64()) {
                let epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
                let known = positions.entry(name.to_owned()).or_insert((epoch.clone(), 0));
                if seq > known.1 {
                    *known = (epoch, seq);
                }
            }
            match frame["op"].as_i64() {
                Some(8) => {
                    if let Some((sender, seq)) = frame["clientMsgId"].as_str().and_then(|id| self.client_msg_seq(id)) {
                        self.ledger.ack(sender, seq);
                    }
                    self.progress.acked.fetch_add(1, Ordering::Relaxed);
                    self.window.add_permits(1);
                }
                Some(9) if frame.get("clientMsgId").is_some() => {
                    self.progress.refused(frame["msg"].as_str().unwrap_or("refused"));
                    self.window.add_permits(1);
                }
                Some(o) if o == self.op => {
                    // A private message's copy to the sender's own inbox is not a delivery.
                    if self.op == 2 && frame["fromUserId"].as_u64() == Some(self.me.id) {
                        continue;
                    }
                    let Some((sender, seq, due)) =
                        frame["msg"].as_str().and_then(|m| measure::decode_body(&self.run, m))
                    else {
                        continue;
                    };
                    let before = result.receiver.unique;
                    result.receiver.record(sender, seq);
                    if result.receiver.unique > before {
                        self.progress.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    let latency = self.start.elapsed().saturating_sub(due);
                    let _ = result.histogram.record(latency.as_micros().max(1) as u64);
                }
                _ => {}
            }
        }
        drop(held);
        result
    }

    /// (sender, seq) of one of this run's client message ids.
    fn client_msg_seq(&self, id: &str) -> Option<(usize, u64)> {
        let mut parts = id.strip_prefix(self.run.as_str())?.strip_prefix('-')?.split('-');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// Connects again, to the next node each attempt, resuming every stream
    /// after its last position; `None` once the run is over.
    async fn reconnect(
        &self,
        positions: &std::collections::HashMap<String, (String, u64)>,
        attempt: &mut usize,
    ) -> Option<(FrameSink, FrameStream)> {
        let since = |stream: String| {
            let (epoch, seq) = positions.get(&stream).cloned().unwrap_or_default();
            json!({"epoch": epoch, "seq": seq})
        };
        let resume = json!({
            "since": since(format!("room:{}", self.room)),
            "inboxSince": since(format!("user:{}", self.me.id)),
        });
        let mut backoff = courier_retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            *attempt += 1;
            let node = &self.nodes[(self.index + *attempt) % self.nodes.len()];
            match clients::open_resuming(node, self.transport, &self.me, self.room, &resume).await {
                Ok(connection) => {
                    self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
                    return Some(connection);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if why.contains("log in again") || why.contains("Session error") {
                        // The session is gone (Redis came back empty): log in again.
                        let _ = self.me.log_in_again(node).await;
                    }
                    if !backoff.wait(&self.stop).await {
                        return None;
                    }
                }
            }
        }
    }
}

fn print_progress(progress: &Progress, elapsed: Duration, total: Duration) {
    let done = (elapsed.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0);
    let filled = (done * 30.0) as usize;
    eprint!(
        "\r[{}{}] {:>5.1}s  sent {:>9}  acked {:>9}  delivered {:>10}  failed {:>6}",
        "#".repeat(filled),
        ".".repeat(30 - filled),
        elapsed.as_secs_f64(),
        progress.sent.load(Ordering::Relaxed),
        progress.acked.load(Ordering::Relaxed),
        progress.delivered.load(Ordering::Relaxed),
        progress.failed.load(Ordering::Relaxed),
    );
}

fn print_table(r: &Report) {
    let rate = if r.rate_target > 0.0 { format!("{} msg/s", r.rate_target) } else { "flat out".into() };
    println!(
        "scenario {}  transport {:?}  send via {:?}  connections {}  senders {}  rate {}",
        r.scenario, r.transport, r.send_via, r.connections, r.senders, rate
    );
    println!("{:<22}{:>12}", "sent", r.sent);
    println!("{:<22}{:>12}", "acknowledged", r.acknowledged);
    println!("{:<22}{:>12}", "failed", r.failed);
    println!("{:<22}{:>12}", "delivered", r.delivered);
    println!("{:<22}{:>12}", "lost", r.lost);
    if r.unacknowledged_delivered > 0 {
        println!("{:<22}{:>12}", "delivered, not acked", r.unacknowledged_delivered);
    }
    if r.reconnects > 0 {
        println!("{:<22}{:>12}", "reconnects", r.reconnects);
    }
    println!("{:<22}{:>12}", "duplicated", r.duplicated);
    println!("{:<22}{:>12}", "out of order", r.out_of_order);
    println!("{:<22}{:>12.0}", "messages/s", r.messages_per_s);
    println!("{:<22}{:>12.0}", "deliveries/s", r.deliveries_per_s);
    let l = &r.latency;
    println!(
        "latency ms            p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    println!(
        "server CPU            {:.2} s in {:?}: {:.1} µs/message, {:.2} µs/delivery",
        r.server_cpu_s, r.server_pids, r.server_cpu_us_per_message, r.server_cpu_us_per_delivery
    );
    let shares: Vec<String> = r.server_cpu_by_process.iter().map(|(kind, s)| format!("{kind} {s:.2} s")).collect();
    println!("server CPU by process {}", shares.join(" · "));
    match &r.stages {
        Some(b) if !b.stages.is_empty() => {
            println!("since admission, as the servers timed it (ms):");
            for s in &b.stages {
                println!(
                    "  {:<12}{:>10} × p50 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}",
                    s.stage, s.count, s.p50_ms, s.p99_ms, s.p999_ms
                );
            }
            println!("push gaps held back   {} ({} filled from history)", b.push_gaps, b.gaps_filled_from_history);
        }
        _ => println!("no per-stage breakdown: no server /metrics answered (see --metrics)"),
    }
}
