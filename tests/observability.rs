//! The observability files in `dashboards/` checked against the real thing.
//!
//! - Prometheus's own tool: the alert rules parse and pass their unit tests
//!   (each alert fires on a series made to trip it and stays quiet on a
//!   healthy one); the example scrape configuration is valid.
//! - The dashboards' structure: unique panel ids, a datasource, a unit and a
//!   description on every panel, only defined variables, and only metrics some
//!   tier exports.
//! - Every query on a real Prometheus (Debian's) scraping a running Courier
//!   that carries traffic: every panel's expressions parse, every panel not
//!   marked "Empty on a healthy system." returns data, and every alert rule
//!   evaluates without error.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Runs `promtool` with `args` in `dashboards/` and returns what it said; a
/// failure fails the test with that text.
fn promtool(args: &[&str]) -> Option<String> {
    let promtool = courier_testkit::tool("promtool")?;
    let out = Command::new(promtool).args(args).current_dir(dashboards_dir()).output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    Some(said)
}

#[test]
fn alert_rules_parse_and_pass_their_unit_tests() {
    let Some(said) = promtool(&["check", "rules", "alerts.yml"]) else { return };
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
    let Some(said) = promtool(&["test", "rules", "alerts_test.yml"]) else { return };
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_example_scrape_configuration_is_valid() {
    let Some(said) = promtool(&["check", "config", "prometheus.yml"]) else { return };
    assert!(said.contains("1 rule files found"), "{said}");
}

/// The dashboards, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("dashboard file");
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            found.push((name, serde_json::from_str(&text).expect("a dashboard is JSON")));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every query of a dashboard: (panel title, quiet, expression).
fn queries(dashboard: &Value) -> Vec<(String, bool, String)> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        let quiet = panel["description"].as_str().is_some_and(|d| d.ends_with("Empty on a healthy system."));
        for target in panel["targets"].as_array().into_iter().flatten() {
            all.push((title.clone(), quiet, target["expr"].as_str().unwrap_or_default().to_owned()));
        }
    }
    all
}

/// Every sample name of the families some tier exports.
fn exported_names() -> BTreeSet<String> {
    let metrics = courier_telemetry::Metrics::new();
    let mut names = BTreeSet::new();
    for family in metrics.families() {
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            names.insert(format!("{family}{suffix}"));
        }
    }
    names
}

#[test]
fn dashboards_are_well_formed_and_use_only_exported_metrics() {
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["api-logic.json", "gateway.json", "overview.json", "pipeline.json"]);
    let exported = exported_names();
    for (name, dashboard) in &dashboards {
        assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "{name}: schemaVersion");
        let variables: Vec<&Value> = dashboard["templating"]["list"].as_array().expect("variables").iter().collect();
        let defined: BTreeSet<&str> = variables.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(defined, BTreeSet::from(["datasource", "instance", "tier"]), "{name}");
        let source = variables.iter().find(|v| v["name"] == "datasource").expect("datasource variable");
        assert_eq!((&source["type"], &source["query"]), (&json!("datasource"), &json!("prometheus")), "{name}");
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "{name}: ids are unique ({title})");
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}: {title} has the datasource");
            assert!(panel["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()), "{title} unit");
            assert!(panel["description"].as_str().is_some_and(|d| d.len() > 10), "{name}: {title} describes itself");
            assert!(!panel["targets"].as_array().expect("targets").is_empty(), "{name}: {title} queries something");
            for target in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{name}: {title}'s queries too");
            }
        }
        for (title, _, expr) in queries(dashboard) {
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')) {
                if let Some(variable) = word.strip_prefix('$') {
                    assert!(defined.contains(variable) || variable.starts_with("__"), "{title}: ${variable}");
                }
                if word.starts_with("courier_") {
                    assert!(exported.contains(word), "{name}: {title} queries {word}, which no tier exports");
                }
            }
        }
    }
}

/// A loopback port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// Prometheus, stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second as job `courier-standalone`, with the alert rules.
    fn start(dir: &Path, target: std::net::SocketAddr) -> Option<Self> {
        let binary = courier_testkit::tool("prometheus")?;
        let rules = dashboards_dir().join("alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: courier-standalone\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Some(Self { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", percent_encoded(v))).collect();
        let url = format!("{}{path}?{}", self.url, query.join("&"));
        let response = self.http.get(url).send().await.ok()?;
        response.json().await.ok()
    }

    /// The series `expr` returns now; an error if it does not parse.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self.get("/api/v1/query", &[("query", expr)]).await.ok_or("no answer")?;
        if answer["status"] != "success" {
            return Err(answer["error"].as_str().unwrap_or("failed").to_owned());
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// `text` for a URL's query string.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard query as Grafana would send it, variables set to "all".
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s").replace("$instance", ".*").replace("$tier", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_query_runs_on_a_real_prometheus() {
    use courier::standalone::{Standalone, StandaloneConfig};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    let courier = Standalone::start(config).await.expect("standalone starts");
    let Some(prometheus) = Prometheus::start(dir.path(), courier.addresses.admin) else { return };

    // Traffic through every tier: logins, room and private messages written
    // to WebSocket clients.
    let api = common::Api::new(courier.addresses.api);
    let (ann_token, ann) = api.register("ann").await;
    let (_, bob) = api.register("bob").await;
    let login = api.post("/user/login", json!({"userName": "bob", "passWord": "secret-pw"})).await;
    let bob_token = login["data"].as_str().expect("bob logs in").to_owned();
    let mut ann_ws = common::Ws::connect(courier.addresses.ws, &ann_token, 1).await;
    let mut bob_ws = common::Ws::connect(courier.addresses.ws, &bob_token, 1).await;
    ann_ws.await_members(&[ann, bob]).await;
    let traffic = async {
        for round in 0..20 {
            let room = json!({"authToken": ann_token, "msg": format!("r{round}"), "roomId": 1});
            assert_eq!(api.post("/push/pushRoom", room).await["code"], 0);
            let private = json!({"authToken": bob_token, "msg": format!("p{round}"), "toUserId": ann, "roomId": 1});
            assert_eq!(api.post("/push/push", private).await["code"], 0);
        }
    };
    let (_, room_frames, _) = tokio::join!(traffic, bob_ws.take_op(3, 20), ann_ws.take_op(2, 20));
    assert_eq!(room_frames.len(), 20);

    // Every panel that shows something on a healthy system shows it.
    let dashboards = dashboards();
    let all: Vec<(String, bool, String)> = dashboards
        .iter()
        .flat_map(|(name, d)| queries(d).into_iter().map(move |(t, q, e)| (format!("{name}: {t}"), q, e)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut empty = Vec::new();
        for (title, quiet, expr) in &all {
            match prometheus.query(&as_sent(expr)).await {
                Ok(series) if series.is_empty() && !quiet => empty.push(format!("{title}: {expr}")),
                Ok(_) => {}
                Err(e) if e == "no answer" => empty.push("Prometheus does not answer yet".to_owned()),
                Err(e) => panic!("{title}: {expr} does not run: {e}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "panels without data:\n{}", empty.join("\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The variables' values exist.
    for label in ["tier", "instance"] {
        let values =
            prometheus.get(&format!("/api/v1/label/{label}/values"), &[("match[]", "courier_build_info")]).await;
        let values = values.and_then(|v| v["data"].as_array().cloned()).unwrap_or_default();
        assert!(!values.is_empty(), "no values for ${label}");
    }

    // Every alert rule of dashboards/alerts.yml was evaluated on this data
    // without an error.
    let source = std::fs::read_to_string(dashboards_dir().join("alerts.yml")).expect("alerts.yml");
    let source: Value = serde_saphyr::from_str(&source).expect("alerts.yml is YAML");
    let declared: usize = source["groups"]
        .as_array()
        .expect("alert groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(declared > 0, "alerts.yml declares no rule");
    let rules = courier_testkit::eventually("the alert rules evaluated", Duration::from_secs(30), || async {
        let answer = prometheus.get("/api/v1/rules", &[]).await?;
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == declared
            && rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        evaluated.then_some(rules)
    })
    .await;
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{}: {}", rule["name"], rule["lastError"]);
    }
    courier.stop().await;
}
