//! Clients for the end-to-end tests: gochat's HTTP API, WebSocket and TCP
//! protocols spoken over real sockets, with waits that end on an event (a frame
//! arriving) or fail after a deadline, never fixed sleeps.

#![allow(dead_code)]

pub mod proxy;
pub mod recovery;
pub mod replay;
pub mod tiers;

use std::net::SocketAddr;
use std::time::Duration;

use courier_wire::tcp::V1Codec;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::Framed;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// gochat's HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    /// POSTs a JSON body and returns the envelope (asserting HTTP 200).
    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> Value {
        self.send(self.http.post(format!("{}{path}", self.base)).body(body)).await
    }

    /// POSTs as if through a proxy that saw the client at `client`.
    pub async fn post_from(&self, client: &str, path: &str, body: Value) -> Value {
        let request = self.http.post(format!("{}{path}", self.base)).header("x-forwarded-for", client);
        self.send(request.body(body.to_string())).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Value {
        let response = request.header("content-type", "application/json").send().await.expect("request");
        assert_eq!(response.status(), 200, "gochat answers every request with HTTP 200");
        response.json().await.expect("JSON envelope")
    }

    /// Registers a user; returns (token, user id).
    pub async fn register(&self, name: &str) -> (String, u64) {
        let answer = self.post("/user/register", json!({"userName": name, "passWord": "secret-pw"})).await;
        assert_eq!(answer["code"], 0, "register {name}: {answer}");
        assert_eq!(answer["message"], "register success");
        let token = answer["data"].as_str().expect("token").to_owned();
        let me = self.post("/user/checkAuth", json!({"authToken": token})).await;
        assert_eq!(me["code"], 0, "{me}");
        (token, me["data"]["userId"].as_u64().expect("userId"))
    }
}

/// A WebSocket client.
pub struct Ws {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects and sends gochat's auth message.
    pub async fn connect(addr: SocketAddr, token: &str, room: u64) -> Self {
        Self::connect_with(addr, json!({"authToken": token, "roomId": room})).await
    }

    /// Connects and sends `auth` as the first message (Courier's `since` fields).
    pub async fn connect_with(addr: SocketAddr, auth: Value) -> Self {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("websocket connect");
        socket.send(Message::Text(auth.to_string().into())).await.expect("auth message");
        Self { socket }
    }

    /// The next `n` frames with `op`, skipping others; on a timeout, says what
    /// did arrive.
    pub async fn take_op(&mut self, op: i64, n: usize) -> Vec<Value> {
        let mut frames = Vec::with_capacity(n);
        while frames.len() < n {
            match self.next_within(PATIENCE).await {
                Ok(Some(frame)) if frame["op"] == op => frames.push(frame),
                Ok(Some(_)) => {}
                Ok(None) => panic!("closed with {} of {n} op {op} frames: {}", frames.len(), summary(&frames)),
                Err(_) => panic!("only {} of {n} op {op} frames in time: {}", frames.len(), summary(&frames)),
            }
        }
        frames
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket.send(Message::Text(frame.to_string().into())).await.expect("send");
    }

    /// The next JSON frame, or `None` if the server closed the connection.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(PATIENCE).await.expect("a frame in time")
    }

    /// Like [`Ws::next`], but an `Err` when no frame came within `patience`.
    pub async fn next_within(&mut self, patience: Duration) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        loop {
            let message = tokio::time::timeout(patience, self.socket.next()).await?;
            match message {
                Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text).expect("JSON frame"))),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame with `op`, skipping others (presence updates and the like).
    pub async fn next_op(&mut self, op: i64) -> Value {
        loop {
            let frame = self.next().await.unwrap_or_else(|| panic!("closed while waiting for op {op}"));
            if frame["op"] == op {
                return frame;
            }
        }
    }

    /// Waits until an op 5 member list includes every one of `users`.
    pub async fn await_members(&mut self, users: &[u64]) {
        loop {
            let frame = self.next_op(5).await;
            if users.iter().all(|u| frame["roomUserInfo"].get(u.to_string()).is_some()) {
                return;
            }
        }
    }

    /// Closes from the client's side and waits for the server to finish the
    /// handshake (its close frame, then the end of the connection).
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        let finished = tokio::time::timeout(PATIENCE, async { while let Some(Ok(_)) = self.socket.next().await {} });
        finished.await.expect("the server finishes closing in time");
    }

    /// The close frame's code and reason after the server closes.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next()).await.expect("close in time");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => return Some((frame.code.into(), frame.reason.to_string())),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Connects a WebSocket to `room` once the server takes it: a connection the
/// server refuses (closes right after the auth message) is tried again, until
/// one is answered with a frame.
pub async fn eventually_connects(addr: SocketAddr, token: &str, room: u64) -> Ws {
    courier_testkit::eventually("a connection is taken", PATIENCE, || async {
        let mut ws = Ws::connect(addr, token, room).await;
        // A connection taken gets the room's member list within a flush
        // interval; a refused one gets a close frame at once.
        let first = ws.next_within(PATIENCE).await.ok().flatten()?;
        (first["op"] == 4 || first["op"] == 5).then_some(ws)
    })
    .await
}

/// A client of gochat's TCP protocol.
pub struct Tcp {
    framed: Framed<TcpStream, V1Codec>,
}

impl Tcp {
    /// Connects and sends op 6 (authenticate and join `room`).
    pub async fn connect(addr: SocketAddr, token: &str, room: u64) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        let mut tcp = Self { framed: Framed::new(stream, V1Codec) };
        tcp.send(json!({"op": 6, "authToken": token, "roomId": room})).await;
        tcp
    }

    pub async fn send(&mut self, frame: Value) {
        self.framed.send(frame.to_string().into_bytes()).await.expect("tcp send");
    }

    /// The next JSON frame (heartbeats skipped), or `None` when closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.framed.next()).await.expect("a frame in time");
            match frame {
                Some(Ok(payload)) if &payload[..] == b"ping msg" => continue,
                Some(Ok(payload)) => return Some(serde_json::from_slice(&payload).expect("JSON payload")),
                _ => return None,
            }
        }
    }

    pub async fn next_op(&mut self, op: i64) -> Value {
        loop {
            let frame = self.next().await.unwrap_or_else(|| panic!("closed while waiting for op {op}"));
            if frame["op"] == op {
                return frame;
            }
        }
    }
}

/// `msg@stream#seq` of each frame, for failure messages.
pub fn summary(frames: &[Value]) -> String {
    let parts: Vec<String> = frames
        .iter()
        .map(|f| format!("{}@{}#{}", f["msg"].as_str().unwrap_or("?"), f["stream"].as_str().unwrap_or("?"), f["seq"]))
        .collect();
    parts.join(" ")
}
