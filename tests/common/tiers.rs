//! Tier processes for the multi-process tests: free ports, the environment a
//! cluster on the production backends shares (with mutual TLS between tiers),
//! starting a tier and waiting until it is ready, and reading its metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A free port below the kernel's ephemeral range (32768 and up here), so that no
/// outgoing connection can take it between this check and the tier's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 6_000) as u16;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `courier connect` as `server_id`, serving clients on `ws` and `tcp` and
/// pushes on `push`.
pub fn connect_args(server_id: &str, ws: SocketAddr, tcp: SocketAddr, push: SocketAddr) -> Vec<String> {
    let flags = [("--server-id", server_id.to_owned()), ("--ws-addr", ws.to_string())];
    let more = [("--tcp-addr", tcp.to_string()), ("--push-addr", push.to_string())];
    let mut args = vec!["connect".to_owned()];
    for (flag, value) in flags.into_iter().chain(more) {
        args.extend([flag.to_owned(), value]);
    }
    args
}

/// What every tier of one test cluster shares: the backends, names unique to
/// this run, and internal calls authenticated and over mutual TLS (as a
/// production cluster runs). `None` when the services are not configured.
pub fn cluster_env(data: &Path, kafka: Option<String>, run: u64) -> Option<Vec<(&'static str, String)>> {
    let kafka = match kafka {
        Some(kafka) => kafka,
        None => courier_testkit::service("COURIER_KAFKA")?,
    };
    let postgres = courier_testkit::service("COURIER_POSTGRES")?;
    let redis = courier_testkit::service("COURIER_REDIS")?;
    let mut env = vec![
        ("COURIER_KAFKA", kafka),
        ("COURIER_POSTGRES", postgres),
        ("COURIER_REDIS", redis),
        ("COURIER_REDIS_PREFIX", format!("courier-e2e-{run}:")),
        ("COURIER_ROOM_TOPIC", format!("e2e-{run}-room")),
        ("COURIER_PRIVATE_TOPIC", format!("e2e-{run}-private")),
        ("COURIER_TASK_GROUP", format!("e2e-{run}")),
        ("COURIER_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
        ("COURIER_DATA_DIR", data.display().to_string()),
        ("COURIER_SENDS_PER_SECOND", "0".into()),
        // A short node lease, so a killed connect node is reaped quickly.
        ("COURIER_NODE_LEASE_MS", "2000".into()),
        ("COURIER_HEARTBEAT_MS", "500".into()),
        // A short worker-id lease: a fresh Redis prefix makes logic wait out
        // a renewal interval and a margin before its first send.
        ("COURIER_WORKER_LEASE_MS", "3000".into()),
        ("COURIER_REQUESTS_PER_SECOND_PER_IP", "0".into()),
        ("COURIER_INTERNAL_SECRET", format!("e2e-secret-{run:016x}")),
    ];
    let pki = courier_testkit::Pki::new("courier-internal");
    for (var, file, pem) in [
        ("COURIER_INTERNAL_TLS_CERT", "internal.crt", &pki.cert),
        ("COURIER_INTERNAL_TLS_KEY", "internal.key", &pki.key),
        ("COURIER_INTERNAL_TLS_CA", "internal-ca.crt", &pki.ca),
    ] {
        let path = data.join(file);
        std::fs::write(&path, pem).expect("certificate file");
        env.push((var, path.display().to_string()));
    }
    Some(env)
}

/// Starts `courier <args>` with `env`, its admin endpoints on a free port, and
/// waits until it is ready. Its log goes to `$COURIER_TEST_LOG_DIR/<name>.log`
/// when that is set (to see why a test failed).
pub async fn start(name: &str, args: &[String], env: &[(&'static str, String)]) -> (Child, SocketAddr) {
    let (child, admin) = spawn(name, args, env);
    until_ready(name, admin).await;
    (child, admin)
}

/// Starts `courier <args>` as [`start`] does, without waiting for it.
pub fn spawn(name: &str, args: &[String], env: &[(&'static str, String)]) -> (Child, SocketAddr) {
    let admin = local(free_port());
    let stderr = match std::env::var_os("COURIER_TEST_LOG_DIR") {
        Some(dir) => {
            Stdio::from(std::fs::File::create(Path::new(&dir).join(format!("{name}.log"))).expect("tier log file"))
        }
        None => Stdio::null(),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("COURIER_ADMIN_ADDR", admin.to_string())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("tier starts");
    (child, admin)
}

/// What `/readyz` of the tier at `admin` says: (ready, body), `None` while
/// it does not answer.
pub async fn readyz(admin: SocketAddr) -> Option<(bool, String)> {
    let response = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
    let ready = response.status().is_success();
    Some((ready, response.text().await.ok()?))
}

/// Waits until the tier whose admin endpoints are at `admin` is ready.
pub async fn until_ready(name: &str, admin: SocketAddr) {
    let http = reqwest::Client::new();
    let url = format!("http://{admin}/readyz");
    courier_testkit::eventually(&format!("{name} ready"), Duration::from_secs(60), || async {
        let response = http.get(&url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

/// The tier's Prometheus metrics text.
async fn metrics_text(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics endpoint answers")
        .text()
        .await
        .expect("metrics text")
}

/// The value of `sample` (`name{labels}`) in `text`, if exported.
fn sample_in(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A sample the tier must export: a renamed metric or label fails here
/// instead of reading as 0.
pub async fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let text = metrics_text(admin).await;
    sample_in(&text, sample).unwrap_or_else(|| panic!("{admin} does not export {sample}"))
}

/// A labelled counter that appears only once counted (errors by reason): 0
/// while absent, but its family must be declared, so a renamed metric still
/// fails.
pub async fn count(admin: SocketAddr, sample: &str) -> f64 {
    let text = metrics_text(admin).await;
    // The classic format names a counter family with its `_total`,
    // OpenMetrics without.
    let name = sample.split('{').next().unwrap_or(sample);
    let declared = [name, name.trim_end_matches("_total")]
        .iter()
        .any(|family| text.contains(&format!("# TYPE {family} counter\n")));
    assert!(declared, "{admin} declares no counter {name}");
    sample_in(&text, sample).unwrap_or(0.0)
}

/// Waits until `sample` on `admin` reads `value`.
pub async fn until_metric(admin: SocketAddr, sample: &str, value: f64) {
    courier_testkit::eventually(&format!("{sample} = {value}"), Duration::from_secs(30), || async {
        (sample_in(&metrics_text(admin).await, sample) == Some(value)).then_some(())
    })
    .await;
}
