//! HTTP/1.1 by hand over a real socket, for requests no well-behaved client sends: lying
//! lengths, repeated headers, stalls half-way, header floods.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// How long a test waits for an answer it expects.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A request written byte by byte as built.
pub(crate) struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: Option<String>,
}

impl RawRequest {
    /// `POST /webhooks/fluent` with `content-type: application/json` and `body`.
    pub(crate) fn webhook(body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", "/webhooks/fluent")
            .header("content-type", "application/json")
            .body(body)
    }

    pub(crate) fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: vec![("host".into(), "gateway.test".into())],
            body: Vec::new(),
            content_length: None,
        }
    }

    /// Adds a header (again, when it is there already).
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds every header of `headers`.
    pub(crate) fn headers<N: AsRef<str>, V: AsRef<str>>(mut self, headers: &[(N, V)]) -> Self {
        for (name, value) in headers {
            self.headers
                .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        }
        self
    }

    pub(crate) fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Declares this `content-length`, whatever the body is.
    pub(crate) fn content_length(mut self, declared: u64) -> Self {
        self.content_length = Some(declared.to_string());
        self
    }

    /// The head alone (request line, headers, blank line).
    pub(crate) fn head(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let length = self
            .content_length
            .clone()
            .unwrap_or_else(|| self.body.len().to_string());
        head.push_str(&format!("content-length: {length}\r\n\r\n"));
        head.into_bytes()
    }

    /// Head and body.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.head();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// An answer read off the socket.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    /// The head, lower-cased.
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not a JSON body ({error}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` code of a JSON refusal.
    pub(crate) fn code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }

    pub(crate) fn has_header(&self, name: &str, value: &str) -> bool {
        self.head.lines().any(|line| {
            line.split_once(':')
                .is_some_and(|(n, v)| n.trim() == name && v.trim() == value)
        })
    }
}

/// One connection to the gateway.
pub(crate) struct Connection(TcpStream);

impl Connection {
    pub(crate) async fn open(address: SocketAddr) -> Self {
        Self(
            TcpStream::connect(address)
                .await
                .expect("the gateway accepts"),
        )
    }

    /// A connection whose socket buffers are `bytes` (the kernel doubles them): few bytes in
    /// flight, so a stalled side shows at once instead of filling megabytes of buffer first.
    pub(crate) async fn open_small(address: SocketAddr, bytes: u32) -> Self {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket.set_send_buffer_size(bytes).expect("SO_SNDBUF");
        Self(socket.connect(address).await.expect("the gateway accepts"))
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.expect("the gateway reads");
    }

    /// Sends what the gateway takes of `bytes`, for tests where it may stop taking them.
    pub(crate) async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await
    }

    /// Closes our half: no more bytes are coming.
    pub(crate) async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }

    /// Sends `request` whole and reads the answer.
    pub(crate) async fn exchange(&mut self, request: &RawRequest) -> RawResponse {
        self.send(&request.bytes()).await;
        self.response().await
    }

    /// Reads one answer (head, then a `content-length` body), failing after [`ANSWER_WITHIN`].
    pub(crate) async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(ANSWER_WITHIN, self.read_response())
            .await
            .expect("an answer in time")
            .expect("a well-formed answer")
    }

    async fn read_response(&mut self) -> std::io::Result<RawResponse> {
        let mut buffer = Vec::new();
        let mut chunk = [0; 8192];
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let read = self.0.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let mut body = buffer[head_end..].to_vec();
        while body.len() < length {
            let read = self.0.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..read]);
        }
        Ok(RawResponse { status, head, body })
    }

    /// True when the gateway closes the connection within `within`, whatever it sent first.
    pub(crate) async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0; 1024];
        tokio::time::timeout(within, async {
            loop {
                match self.0.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}
