//! `courier standalone` as a real process: what it acknowledged survives `kill -9`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use common::Api;
use courier_store::HistoryStore;
use courier_store::sqlite::SqliteStore;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A standalone process, killed when dropped.
struct Process {
    child: Child,
    api: SocketAddr,
}

impl Process {
    async fn start(data_dir: &Path) -> Self {
        let any = "127.0.0.1:0";
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["standalone", "--no-demo-users", "--data-dir"])
            .arg(data_dir)
            .args(["--api-addr", any, "--ws-addr", any, "--tcp-addr", any, "--site-addr", any, "--admin-addr", any])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("courier starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let api = tokio::time::timeout(common::PATIENCE, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.trim().strip_prefix("HTTP API") {
                    let addr = url.trim().trim_start_matches("http://");
                    return addr.parse().expect("API address");
                }
            }
            panic!("courier exited before printing its addresses");
        })
        .await
        .expect("courier prints its addresses in time");
        // Keep reading, so the process never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, api }
    }

    async fn kill_9(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let courier = Process::start(&data).await;
    let api = Api::new(courier.api);
    let (token, _) = api.register("frank").await;
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let body = format!("m{i}");
        let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": body, "roomId": 5})).await;
        assert_eq!(answer["code"], 0, "{answer}");
        acknowledged.push(body);
    }
    // No grace period: the process dies with acknowledged messages possibly not
    // yet persisted by task.
    courier.kill_9().await;

    let courier = Process::start(&data).await;
    let api = Api::new(courier.api);
    let login = api.post("/user/login", json!({"userName": "frank", "passWord": "secret-pw"})).await;
    assert_eq!(login["code"], 0, "the account survives: {login}");

    let store = SqliteStore::open(&data.join("courier.sqlite")).await.expect("open store");
    // Task catches up from its committed offsets after the restart.
    let history =
        courier_testkit::eventually("the history to hold every acknowledged message", common::PATIENCE, || async {
            let history = store.read_after(courier_store::StreamId::Room(5), 0, 100).await.expect("read history");
            (history.len() >= acknowledged.len()).then_some(history)
        })
        .await;
    let bodies: Vec<&str> = history.iter().map(|m| m.message.body.as_str()).collect();
    assert_eq!(bodies, acknowledged, "every acknowledged message, once, in order");
    let seqs: Vec<u64> = history.iter().map(|m| m.position.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>(), "gap-free seqs");
    courier.kill_9().await;
}
