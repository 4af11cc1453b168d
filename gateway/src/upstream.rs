//! Connections to the engines: HTTP/1.1 (see [`h1`]), kept alive between
//! requests in a small idle pool per endpoint, and read by the request that
//! uses one.
//!
//! A connection has no task of its own: it is a socket and a read buffer.
//! The request's task writes the request and reads the response head; the
//! response body then reads the socket itself each time it is polled (see
//! `proxy::MeteredBody`), so the events that one read from the engine
//! brought reach the client's connection one after the other in one poll,
//! and leave in one write; no frame crosses from one task to another.
//!
//! A connection whose answer ended as HTTP says, and which the engine keeps
//! open, goes back to its endpoint's idle list; a request for that endpoint
//! takes the most recently returned one. An idle connection is read by
//! nobody, so one the engine closed meanwhile is found out when it is taken
//! (a read that does not block shows the close, and it is dropped); a
//! request that a taken connection still fails before any answer (the engine
//! closed it just as it was used) is sent again on a new connection. A
//! connection whose request ends early (the client went away, the request
//! timed out) is dropped, which closes it: the engine sees its client leave
//! and stops generating.

pub(crate) mod h1;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use h1::{Decoded, Framing, Head};

/// What a read asks the buffer to have room for.
const READ_SIZE: usize = 4 << 10;

/// How the connections to the engines are made and kept.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long a connection may stay idle before it is closed.
    pub idle_timeout: Duration,
    /// At most this many idle connections per endpoint; the oldest goes first.
    pub max_idle_per_endpoint: usize,
}

/// The idle connections to every endpoint, and how new ones are made.
pub(crate) struct Pool {
    config: PoolConfig,
    idle: Mutex<Idle>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Idle {
    /// Per endpoint, the oldest first.
    lists: crate::FastMap<SocketAddr, VecDeque<(Conn, Instant)>>,
    /// When connections idle for too long were last closed.
    swept: Instant,
}

/// Why a request did not get its response head from an engine.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// No connection could be made: nothing reached the engine.
    NotConnected,
    /// The connection failed after the request was (maybe) sent.
    Failed,
}

/// One HTTP/1.1 connection to an engine, read by whoever holds it.
pub(crate) struct Conn {
    stream: TcpStream,
    /// What was read and not yet taken.
    buf: BytesMut,
    /// How much is left of the body being read.
    framing: Framing,
    /// Whether the engine keeps the connection after the current answer.
    keep_alive: bool,
    addr: SocketAddr,
    /// Whether it served a request before this one.
    reused: bool,
}

/// Why an exchange failed, and how far it got.
struct Failure {
    /// Some of the request was written.
    sent: bool,
    /// Some of an answer was read.
    answered: bool,
    error: io::Error,
}

impl Conn {
    /// Reads what the socket has into the buffer; `Ok(0)` at its end. A read
    /// that leaves room in the buffer tells tokio the socket is drained, so
    /// that [`still_open`](Self::still_open) needs no call of its own.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Writes the request and reads the response head.
    async fn exchange(&mut self, head: &[u8], body: &[u8]) -> Result<Head, Failure> {
        let mut out = head.chain(body);
        let total = out.remaining();
        if let Err(error) = self.stream.write_all_buf(&mut out).await {
            return Err(Failure {
                sent: out.remaining() < total,
                answered: false,
                error,
            });
        }
        loop {
            match h1::parse_head(&mut self.buf) {
                Ok(Some(head)) => {
                    self.framing = head.framing;
                    self.keep_alive = head.keep_alive;
                    // An empty body, or one read whole with its head, has ended.
                    let _ = self.framing.settle(&mut self.buf);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(Failure {
                        sent: true,
                        answered: true,
                        error: error.into(),
                    });
                }
            }
            let read = std::future::poll_fn(|cx| self.poll_fill(cx)).await;
            let error = match read {
                Ok(0) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the engine closed the connection before answering",
                ),
                Ok(_) => continue,
                Err(error) => error,
            };
            return Err(Failure {
                sent: true,
                answered: !self.buf.is_empty(),
                error,
            });
        }
    }

    /// The next bytes of the answer's body: `None` once it has ended as
    /// HTTP says. When it is pending, the engine's socket wakes the task.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match self.framing.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => {
                    // A body whose end came with this data says so at once;
                    // anything malformed after it fails the next poll.
                    let _ = self.framing.settle(&mut self.buf);
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(error) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.framing == Framing::Eof => {
                    self.framing = Framing::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the engine closed the connection before the end of the answer",
                    ))));
                }
                Ok(_) => {}
                Err(error) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    /// Whether the answer's body has ended as HTTP says.
    pub(crate) fn body_ended(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Bytes of the body still to come, when the engine said how many.
    pub(crate) fn body_remaining(&self) -> Option<u64> {
        self.framing.remaining()
    }

    /// Whether the connection can take another request: the answer has
    /// ended, the engine keeps the connection, and it sent nothing more.
    fn reusable(&self) -> bool {
        self.keep_alive && self.body_ended() && self.buf.is_empty()
    }

    /// Whether an idle connection is still open: a read that does not block
    /// finds neither its end nor anything the engine should not have sent.
    fn still_open(&mut self) -> bool {
        // Not readable since the last read drained the socket: open, and
        // nothing was sent. Readable (or not known): a read tells which.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.stream.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl Pool {
    pub(crate) fn new(config: PoolConfig) -> Self {
        Self {
            config,
            idle: Mutex::new(Idle {
                lists: crate::FastMap::default(),
                swept: Instant::now(),
            }),
        }
    }

    /// Sends `request` to `addr`, on an idle connection or a new one, and
    /// returns the response head with the connection, which the caller reads
    /// the body from and gives back with [`put`](Self::put) once it has
    /// ended.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        request: &h1::Request<'_>,
    ) -> Result<(Head, Conn), SendError> {
        let head = request.head();
        let mut fresh_only = false;
        loop {
            let taken = if fresh_only { None } else { self.take(addr) };
            let mut conn = match taken {
                Some(conn) => conn,
                None => self.connect(addr).await?,
            };
            match conn.exchange(&head, request.body).await {
                Ok(answer) => return Ok((answer, conn)),
                Err(failure) => {
                    if conn.reused && !failure.answered && closed_by_peer(&failure.error) {
                        // The engine closed the idle connection as it was
                        // taken: the request goes again, on a new one.
                        tracing::debug!(endpoint = %addr, error = %failure.error, "idle engine connection was closed; reconnecting");
                        fresh_only = true;
                        continue;
                    }
                    tracing::debug!(endpoint = %addr, error = %failure.error, "upstream request failed");
                    return Err(if failure.sent {
                        SendError::Failed
                    } else {
                        SendError::NotConnected
                    });
                }
            }
        }
    }

    /// Gives back a connection whose answer has ended: it goes to its
    /// endpoint's idle list if it can take another request, else it closes.
    pub(crate) fn put(&self, mut conn: Conn) {
        if self.config.max_idle_per_endpoint == 0 || !conn.reusable() {
            return;
        }
        conn.reused = true;
        // An idle connection holds no buffer.
        conn.buf = BytesMut::new();
        let now = Instant::now();
        let mut closing = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            self.sweep(&mut idle, now, &mut closing);
            let list = idle.lists.entry(conn.addr).or_default();
            while list.len() >= self.config.max_idle_per_endpoint {
                closing.extend(list.pop_front());
            }
            list.push_back((conn, now));
        }
        // Closed outside the lock.
        drop(closing);
    }

    /// The most recently returned idle connection to `addr` that is still
    /// open; those the engine closed are dropped on the way.
    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        loop {
            let (mut conn, since) = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let list = idle.lists.get_mut(&addr)?;
                let taken = list.pop_back();
                if list.is_empty() {
                    idle.lists.remove(&addr);
                }
                taken?
            };
            if since.elapsed() >= self.config.idle_timeout {
                // The older ones behind it are older still.
                self.forget(addr);
                return None;
            }
            if conn.still_open() {
                return Some(conn);
            }
            tracing::debug!(endpoint = %addr, "idle engine connection was closed");
        }
    }

    /// Closes every idle connection to `addr`.
    fn forget(&self, addr: SocketAddr) {
        let gone = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.lists.remove(&addr)
        };
        drop(gone);
    }

    /// Moves the connections idle for longer than the idle timeout, of every
    /// endpoint, to `closing`; at most twice an idle timeout.
    fn sweep(&self, idle: &mut Idle, now: Instant, closing: &mut Vec<(Conn, Instant)>) {
        let timeout = self.config.idle_timeout;
        if now.duration_since(idle.swept) < timeout / 2 {
            return;
        }
        idle.swept = now;
        idle.lists.retain(|_, list| {
            while list
                .front()
                .is_some_and(|(_, since)| now.duration_since(*since) >= timeout)
            {
                closing.extend(list.pop_front());
            }
            !list.is_empty()
        });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let stream =
            match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(endpoint = %addr, %error, "could not connect");
                    return Err(SendError::NotConnected);
                }
                Err(_) => {
                    tracing::debug!(endpoint = %addr, "connecting timed out");
                    return Err(SendError::NotConnected);
                }
            };
        // Each event of a stream leaves at once, not after the engine has
        // acknowledged the one before.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            framing: Framing::Done,
            keep_alive: false,
            addr,
            reused: false,
        })
    }
}

/// Whether `error` says the engine closed the connection.
fn closed_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}
