//! Load-generator clients: gochat's HTTP API for accounts and sends, and socket
//! connections (WebSocket or TCP) reduced to a sink and a stream of JSON text, so
//! the scenarios are written once for both transports.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use courier_wire::tcp::V1Codec;
use futures_util::{Sink, SinkExt, Stream, StreamExt, future};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::Framed;

/// Which socket protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Tcp,
}

/// Outgoing JSON frames.
pub type FrameSink = Pin<Box<dyn Sink<String, Error = anyhow::Error> + Send>>;
/// Incoming JSON frames (heartbeats removed).
pub type FrameStream = Pin<Box<dyn Stream<Item = anyhow::Result<String>> + Send>>;

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub api: String,
    pub ws: String,
    pub tcp: String,
    pub http: reqwest::Client,
}

/// A logged-in bench user. Clones share the session, so when one logs in
/// again (its session was lost: Redis came back empty) every task of the user
/// uses the new token.
#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
    pub name: String,
    token: Arc<std::sync::Mutex<String>>,
}

impl User {
    pub fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Logs in again, replacing the session every clone uses.
    pub async fn log_in_again(&self, target: &Target) -> anyhow::Result<()> {
        let fresh = target.user(&self.name, PASSWORD).await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = fresh.token();
        Ok(())
    }
}

/// Every bench user's password.
const PASSWORD: &str = "bench-password";

impl Target {
    async fn post(&self, path: &str, body: Value) -> Result<Value, reqwest::Error> {
        self.http.post(format!("{}{path}", self.api)).json(&body).send().await?.json().await
    }

    /// Logs `name` in, registering it first if it does not exist.
    pub async fn user(&self, name: &str, password: &str) -> anyhow::Result<User> {
        let creds = json!({"userName": name, "passWord": password});
        let mut answer = self.post("/user/login", creds.clone()).await?;
        if answer["code"] != 0 {
            answer = self.post("/user/register", creds).await?;
        }
        if answer["code"] != 0 {
            bail!("cannot log in or register {name}: {}", answer["message"]);
        }
        let token = answer["data"].as_str().context("token")?.to_owned();
        let mut user = User { id: 0, name: name.to_owned(), token: Arc::new(std::sync::Mutex::new(token)) };
        user.id = self.user_id(&user).await?;
        Ok(user)
    }

    /// A session for `name`, registering it when it is new and logging it in
    /// when it exists: one request (and one password hash) per new user, and
    /// no user id (0; see [`Target::user_id`]).
    pub async fn session(&self, name: &str) -> anyhow::Result<User> {
        let creds = json!({"userName": name, "passWord": PASSWORD});
        let registered = self.post("/user/register", creds.clone()).await?;
        let taken = registered["message"].as_str().is_some_and(|m| m.contains("already"));
        let answer = if taken { self.post("/user/login", creds).await? } else { registered };
        if answer["code"] != 0 {
            bail!("{}", answer["message"].as_str().unwrap_or("refused"));
        }
        let token = answer["data"].as_str().context("no token in the answer")?.to_owned();
        Ok(User { id: 0, name: name.to_owned(), token: Arc::new(std::sync::Mutex::new(token)) })
    }

    /// The user id behind `user`'s session.
    pub async fn user_id(&self, user: &User) -> anyhow::Result<u64> {
        let me = self.post("/user/checkAuth", json!({"authToken": user.token()})).await?;
        me["data"]["userId"].as_u64().with_context(|| format!("checkAuth: {me}"))
    }

    /// Logs in `count` users named `<prefix>-<offset + i>`, `parallel` at a time.
    pub async fn users(&self, prefix: &str, offset: usize, count: usize, parallel: usize) -> anyhow::Result<Vec<User>> {
        let permits = Arc::new(Semaphore::new(parallel.max(1)));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(count);
        for i in offset..offset + count {
            let (target, permits, done) = (self.clone(), permits.clone(), done.clone());
            let name = format!("{prefix}-{i}");
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                let user = target.user(&name, PASSWORD).await;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 1000 == 0 {
                    eprintln!("  {n} of {count} users logged in");
                }
                user
            }));
        }
        let mut users = Vec::with_capacity(count);
        for task in tasks {
            users.push(task.await??);
        }
        Ok(users)
    }

    /// Sends one message over HTTP: `Ok` when the server acknowledged it,
    /// otherwise the server's refusal (or the request's failure) as text.
    pub async fn http_send(&self, user: &User, room: u64, to_user: Option<u64>, body: &str) -> Result<(), String> {
        let token = user.token();
        let sent = match to_user {
            Some(to) => {
                self.post("/push/push", json!({"authToken": token, "msg": body, "toUserId": to, "roomId": room})).await
            }
            None => self.post("/push/pushRoom", json!({"authToken": token, "msg": body, "roomId": room})).await,
        };
        match sent {
            Ok(answer) if answer["code"] == 0 => Ok(()),
            Ok(answer) => Err(answer["message"].as_str().unwrap_or("refused").to_owned()),
            Err(e) if e.is_connect() => Err("could not connect to the API".to_owned()),
            Err(e) if e.is_timeout() => Err("no answer from the API in time".to_owned()),
            Err(e) => Err(format!("request failed: {}", e.without_url())),
        }
    }
}

async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding source address {ip}"))?;
    }
    let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens an authenticated connection in `room` and waits until the server has
/// registered it: a deliberately invalid join (room 0) is answered with op 9 only
/// once authentication is complete, which makes a side-effect-free barrier.
pub async fn open(
    target: &Target,
    transport: Transport,
    source: Option<IpAddr>,
    user: &User,
    room: u64,
) -> anyhow::Result<(FrameSink, FrameStream)> {
    open_with(target, transport, source, user, room, &json!({})).await
}

/// [`open`] for a client coming back: `resume` adds the auth message's
/// `since` and `inboxSince`, so the server sends what was missed first.
pub async fn open_resuming(
    target: &Target,
    transport: Transport,
    user: &User,
    room: u64,
    resume: &Value,
) -> anyhow::Result<(FrameSink, FrameStream)> {
    open_with(target, transport, None, user, room, resume).await
}

async fn open_with(
    target: &Target,
    transport: Transport,
    source: Option<IpAddr>,
    user: &User,
    room: u64,
    extra: &Value,
) -> anyhow::Result<(FrameSink, FrameStream)> {
    let (mut sink, mut stream): (FrameSink, FrameStream) = match transport {
        Transport::Ws => {
            let (addr, path) = url_host_port(&target.ws)?;
            let stream = tcp_connect(addr, source).await?;
            // A small read buffer (tungstenite's default is 128 KiB per
            // connection), and the handshake that leaves only it: a bench
            // worker holds many thousands of these.
            let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
            let socket = courier_wire::upgrade::connect(stream, &addr.to_string(), path, config).await?;
            let (sink, stream) = socket.split();
            let sink =
                sink.sink_map_err(anyhow::Error::from).with(|text: String| future::ok(Message::Text(text.into())));
            let stream = stream.filter_map(|m| {
                future::ready(match m {
                    Ok(Message::Text(text)) => Some(Ok(text.to_string())),
                    Ok(Message::Close(frame)) => Some(Err(anyhow!("closed by the server: {frame:?}"))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e.into())),
                })
            });
            (Box::pin(sink), Box::pin(stream))
        }
        Transport::Tcp => {
            let addr: SocketAddr = target.tcp.parse().context("--tcp address")?;
            let stream = tcp_connect(addr, source).await?;
            let (sink, stream) = Framed::new(stream, V1Codec).split();
            let sink = sink.sink_map_err(anyhow::Error::from).with(|text: String| future::ok(Bytes::from(text)));
            let stream = stream.filter_map(|frame| {
                future::ready(match frame {
                    Ok(payload) if &payload[..] == b"ping msg" => None,
                    Ok(payload) => Some(String::from_utf8(payload.to_vec()).map_err(anyhow::Error::from)),
                    Err(e) => Some(Err(e.into())),
                })
            });
            (Box::pin(sink), Box::pin(stream))
        }
    };
    let mut auth = match transport {
        Transport::Ws => json!({"authToken": user.token(), "roomId": room}),
        Transport::Tcp => json!({"op": 6, "authToken": user.token(), "roomId": room}),
    };
    if let (Some(auth), Some(extra)) = (auth.as_object_mut(), extra.as_object()) {
        auth.extend(extra.clone());
    }
    sink.send(auth.to_string()).await?;
    sink.send(json!({"op": 10, "roomId": 0}).to_string()).await?;
    // Frames before the barrier's answer (a resumed stream's history, live
    // traffic) are the caller's: handed back ahead of the rest.
    let mut early = Vec::new();
    while let Some(text) = stream.next().await {
        let text = text?;
        let frame: Value = serde_json::from_str(&text)?;
        if frame["op"] == 9 && frame.get("clientMsgId").is_none() {
            let stream: FrameStream = Box::pin(futures_util::stream::iter(early.into_iter().map(Ok)).chain(stream));
            return Ok((sink, stream));
        }
        early.push(text);
    }
    bail!("connection closed during authentication")
}

/// The address and path of a `ws://IP:PORT/path` URL.
fn url_host_port(url: &str) -> anyhow::Result<(SocketAddr, &str)> {
    let rest = url.split("://").nth(1).context("URL without scheme")?;
    let (host_port, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
    let addr = host_port.parse().with_context(|| format!("{host_port} is not IP:PORT"))?;
    Ok((addr, path))
}
