//! The WebSocket opening handshake (RFC 6455 §4), both ends, done here rather
//! than by tungstenite.
//!
//! tungstenite reads the HTTP head into a 4 KiB buffer and then hands that
//! same allocation to the connection as its read buffer, which it never
//! shrinks: every connection, server or client, keeps 4 KiB for a few hundred
//! bytes of head, whatever `read_buffer_size` says. Reading the head here into
//! a buffer sized by what arrived, then starting the WebSocket from the raw
//! socket with only the bytes that followed the head, leaves each connection
//! with the read buffer its configuration asks for. What the handshake checks
//! is what tungstenite's did: a `GET` of the one path, `Upgrade: websocket`,
//! `Connection: upgrade`, version 13 and a key; a refusal is a plain HTTP
//! answer saying why.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The longest HTTP head read before refusing it.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers read at most.
const MAX_HEADERS: usize = 32;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The peer asked for something this end refuses (and was told so, on the
    /// server side).
    #[error("{status} {reason}")]
    Refused { status: u16, reason: String },
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
}

fn refused(status: u16, reason: impl Into<String>) -> UpgradeError {
    UpgradeError::Refused { status, reason: reason.into() }
}

/// Reads an HTTP head (through the blank line) and whatever followed it in the
/// same reads.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Vec<u8>, Vec<u8>), UpgradeError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the handshake").into());
        }
        // Look for the end from just before the new bytes (it may straddle reads).
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let end = head[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at + 4);
        if let Some(end) = end.filter(|end| *end <= MAX_HEAD) {
            let rest = head.split_off(end);
            head.shrink_to_fit();
            return Ok((head, rest));
        }
        if end.is_some() || head.len() > MAX_HEAD {
            return Err(refused(431, "request header fields too large"));
        }
    }
}

/// The value of header `name` (case-insensitive), if present and text.
fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn lists(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    header(headers, name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Checks an upgrade request for `path` and returns its key.
fn check_request(head: &[u8], path: &str) -> Result<String, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(refused(400, "incomplete request")),
        Err(e) => return Err(refused(400, format!("malformed request: {e}"))),
    }
    if request.method != Some("GET") {
        return Err(refused(405, "a WebSocket upgrade is a GET"));
    }
    let asked = request.path.unwrap_or_default();
    if asked.split('?').next() != Some(path) {
        return Err(refused(404, format!("not found: connect WebSocket clients to {path}")));
    }
    let headers = request.headers;
    if !lists(headers, "upgrade", "websocket") || !lists(headers, "connection", "upgrade") {
        return Err(refused(426, "this endpoint speaks WebSocket only (Upgrade: websocket)"));
    }
    if header(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        return Err(refused(426, "WebSocket version 13 is required"));
    }
    header(headers, "sec-websocket-key")
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| refused(400, "Sec-WebSocket-Key is missing"))
}

/// Answers an upgrade request for `path` on `stream`: the WebSocket, or the
/// refusal (already written to the peer as an HTTP answer).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    config: WebSocketConfig,
) -> Result<WebSocketStream<S>, UpgradeError> {
    let read = async {
        let (head, rest) = read_head(&mut stream).await?;
        Ok::<_, UpgradeError>((check_request(&head, path)?, rest))
    };
    let (key, rest) = match read.await {
        Ok(read) => read,
        Err(UpgradeError::Refused { status, reason }) => return Err(refuse(stream, status, reason).await),
        Err(e) => return Err(e),
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(answer.as_bytes()).await?;
    Ok(WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await)
}

/// Writes a refusal and returns it as the error.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, status: u16, reason: String) -> UpgradeError {
    let phrase = match status {
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let version = if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    let answer = format!(
        "HTTP/1.1 {status} {phrase}\r\n{version}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    );
    // The peer may be gone already; the refusal is the error either way.
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    UpgradeError::Refused { status, reason }
}

/// Opens a WebSocket to `host` (the `Host` header) at `path` over `stream`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
    config: WebSocketConfig,
) -> Result<WebSocketStream<S>, UpgradeError> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (head, rest) = read_head(&mut stream).await?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(refused(502, "malformed handshake answer")),
    }
    let status = response.code.unwrap_or(0);
    if status != 101 {
        let body = String::from_utf8_lossy(&rest).trim().to_owned();
        return Err(refused(status, if body.is_empty() { "the server refused the upgrade".to_owned() } else { body }));
    }
    if header(response.headers, "sec-websocket-accept").map(str::trim)
        != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err(refused(502, "the server's Sec-WebSocket-Accept does not match the key"));
    }
    Ok(WebSocketStream::from_partially_read(stream, rest, Role::Client, Some(config)).await)
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    fn config() -> WebSocketConfig {
        WebSocketConfig::default().read_buffer_size(256)
    }

    /// Both ends of this module speak to each other, and a message sent right
    /// behind the request (in the same write) is not lost.
    #[tokio::test]
    async fn a_client_and_a_server_agree_and_exchange_messages() {
        let (client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut socket = accept(server, "/ws", config()).await?;
            let first = socket.next().await;
            socket.send(Message::text("welcome")).await.map_err(io::Error::other)?;
            Ok::<_, UpgradeError>(first)
        });
        let mut socket = connect(client, "localhost:7000", "/ws", config()).await.expect("handshake");
        socket.send(Message::text("hello")).await.expect("send");
        let reply = socket.next().await.expect("a reply").expect("a message");
        assert_eq!(reply, Message::text("welcome"));
        let first = server.await.expect("server task").expect("server handshake");
        assert_eq!(first.expect("a message").expect("text"), Message::text("hello"));
    }

    /// A client that writes its first frame in the same packet as its request
    /// has that frame read as the first message, not dropped with the head.
    #[tokio::test]
    async fn bytes_after_the_head_are_the_first_frame() {
        let (mut client, server) = tokio::io::duplex(4096);
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
        .into_bytes();
        // A masked text frame "hi" (mask 0,0,0,0 keeps the payload as is).
        request.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        client.write_all(&request).await.expect("write");
        let mut socket = accept(server, "/ws", config()).await.expect("accepted");
        assert_eq!(socket.next().await.expect("a frame").expect("text"), Message::text("hi"));
        let mut answer = vec![0u8; 256];
        let n = client.read(&mut answer).await.expect("answer");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        // RFC 6455's own example key and accept value.
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{answer}");
    }

    /// A request split across many small writes is read whole.
    #[tokio::test]
    async fn a_head_in_small_pieces_is_read_whole() {
        let (mut client, server) = tokio::io::duplex(4096);
        let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5a2V5\r\n\r\n";
        let writer = tokio::spawn(async move {
            for piece in request.as_bytes().chunks(3) {
                client.write_all(piece).await?;
                client.flush().await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, io::Error>(client)
        });
        accept(server, "/ws", config()).await.expect("accepted");
        writer.await.expect("writer").expect("written");
    }

    async fn refusal(request: String) -> (UpgradeError, String) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(request.as_bytes()).await.expect("write");
        let error = accept(server, "/ws", config()).await.expect_err("refused");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("answer");
        (error, answer)
    }

    /// What is not a WebSocket upgrade of `/ws` gets an HTTP answer saying why.
    #[tokio::test]
    async fn what_is_not_an_upgrade_of_the_path_is_refused_with_a_reason() {
        let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13";
        let cases = [
            (format!("GET /other HTTP/1.1\r\n{upgrade}\r\nSec-WebSocket-Key: k\r\n\r\n"), 404, "connect WebSocket clients to /ws"),
            (format!("POST /ws HTTP/1.1\r\n{upgrade}\r\nSec-WebSocket-Key: k\r\n\r\n"), 405, "GET"),
            ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), 426, "WebSocket only"),
            (
                "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: k\r\n\r\n".to_owned(),
                426,
                "version 13",
            ),
            (format!("GET /ws HTTP/1.1\r\n{upgrade}\r\n\r\n"), 400, "Sec-WebSocket-Key"),
            ("NONSENSE\r\n\r\n".to_owned(), 400, "malformed"),
            (format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)), 431, "too large"),
        ];
        for (request, status, why) in cases {
            let (error, answer) = refusal(request).await;
            match error {
                UpgradeError::Refused { status: got, reason } => {
                    assert_eq!(got, status, "{reason}");
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("expected a refusal, got {other}"),
            }
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            assert!(answer.contains(why), "{answer}");
        }
    }

    /// A server that answers with something other than 101 is an error that
    /// carries its answer, and a wrong accept value is not trusted.
    #[tokio::test]
    async fn a_client_reports_a_refused_or_wrong_answer() {
        let (client, server) = tokio::io::duplex(4096);
        tokio::spawn(async move { accept(server, "/other", config()).await });
        let error = connect(client, "x", "/ws", config()).await.expect_err("refused");
        assert!(
            matches!(&error, UpgradeError::Refused { status: 404, reason } if reason.contains("/other")),
            "{error}"
        );

        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut request = vec![0u8; 1024];
            let _ = server.read(&mut request).await;
            let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBrZXk=\r\n\r\n";
            let _ = server.write_all(answer.as_bytes()).await;
            server
        });
        let error = connect(client, "x", "/ws", config()).await.expect_err("wrong accept");
        assert!(error.to_string().contains("does not match"), "{error}");
    }
}
