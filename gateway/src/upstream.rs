//! Connections to the engines: HTTP/1.1, kept alive between requests in a
//! small idle pool per endpoint, and driven by the request that uses one.
//!
//! A connection has no task of its own. While a request waits for the
//! engine's response head, its task polls the connection (which writes the
//! request and reads the head); while the answer streams back, the response
//! body polls it before each frame it hands on (see `proxy::MeteredBody`). So
//! the events that one read from the engine brought reach the client's
//! connection one after the other in one poll, and leave in one write; no
//! frame crosses from one task to another.
//!
//! A connection whose answer ended cleanly, and which HTTP/1.1 keeps open,
//! goes back to its endpoint's idle list; a request for that endpoint takes
//! the most recently returned one. An idle connection is polled by nobody,
//! so one the engine closed meanwhile is found out when it is taken (it is
//! polled once then, which reads the engine's end of the connection, and
//! dropped); a request that a taken connection still fails before any answer
//! (the engine closed it just as it was used) is sent again on a new
//! connection. A connection whose request ends early (the client went away,
//! the request timed out) is dropped, which closes it: the engine sees its
//! client leave and stops generating.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request's body towards an engine: the rewritten JSON, whole.
pub(crate) type RequestBody = Full<Bytes>;

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
    builder: http1::Builder,
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
    lists: HashMap<SocketAddr, VecDeque<(Conn, Instant)>>,
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

/// One HTTP/1.1 connection to an engine, driven by whoever holds it.
pub(crate) struct Conn {
    sender: http1::SendRequest<RequestBody>,
    /// The connection's state machine; `None` once it has ended.
    driver: Option<Box<http1::Connection<TokioIo<TcpStream>, RequestBody>>>,
    addr: SocketAddr,
    /// Whether it served a request before this one.
    reused: bool,
}

impl Conn {
    /// Moves the connection on: writes what is queued, reads what the engine
    /// sent (into the response's head or body). `Ready` once the connection
    /// has ended (closed, or failed).
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(driver) = self.driver.as_mut() else {
            return Poll::Ready(());
        };
        match Pin::new(driver).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(endpoint = %self.addr, %error, "engine connection failed");
                }
                self.driver = None;
                Poll::Ready(())
            }
        }
    }

    /// Whether the connection can take a request now: it is open, and done
    /// with the last one.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx).is_pending() && self.sender.is_ready()
    }
}

impl Pool {
    pub(crate) fn new(config: PoolConfig) -> Self {
        let builder = http1::Builder::new();
        Self {
            config,
            builder,
            idle: Mutex::new(Idle {
                lists: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Sends the request `make` makes to `addr`, on an idle connection or a
    /// new one, and returns the response head with the connection, which
    /// the caller drives while it reads the body and gives back with
    /// [`put`](Self::put) once the body has ended.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        make: impl Fn() -> hyper::Request<RequestBody>,
    ) -> Result<(hyper::Response<Incoming>, Conn), SendError> {
        let mut request = make();
        let mut fresh_only = false;
        loop {
            let taken = if fresh_only {
                None
            } else {
                self.take(addr).await
            };
            let mut conn = match taken {
                Some(conn) => conn,
                None => self.connect(addr).await?,
            };
            let sent = {
                let mut response = pin!(conn.sender.try_send_request(request));
                std::future::poll_fn(|cx| {
                    // The connection first: it writes the request and reads
                    // the head, which completes the response's future.
                    let _ = conn.drive(cx);
                    response.as_mut().poll(cx)
                })
                .await
            };
            match sent {
                Ok(response) => return Ok((response, conn)),
                Err(mut failed) => {
                    let unsent = failed.take_message();
                    let error = failed.into_error();
                    if conn.reused && (unsent.is_some() || closed_by_peer(&error)) {
                        // The engine closed the idle connection as it was
                        // taken: the request goes again, on a new one.
                        tracing::debug!(endpoint = %addr, %error, "idle engine connection was closed; reconnecting");
                        request = unsent.unwrap_or_else(&make);
                        fresh_only = true;
                        continue;
                    }
                    tracing::debug!(endpoint = %addr, %error, "upstream request failed");
                    return Err(if unsent.is_some() {
                        SendError::NotConnected
                    } else {
                        SendError::Failed
                    });
                }
            }
        }
    }

    /// Gives back a connection whose answer has ended: it goes to its
    /// endpoint's idle list if it can take another request, else it closes.
    pub(crate) fn put(&self, mut conn: Conn) {
        // Moves the connection past the end of the answer. Whoever takes it
        // next polls it with a waker of its own.
        let mut cx = Context::from_waker(Waker::noop());
        if self.config.max_idle_per_endpoint == 0 || !conn.usable(&mut cx) {
            return;
        }
        conn.reused = true;
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
    async fn take(&self, addr: SocketAddr) -> Option<Conn> {
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
            if std::future::poll_fn(|cx| Poll::Ready(conn.usable(cx))).await {
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
        let (sender, driver) =
            self.builder
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|error| {
                    tracing::debug!(endpoint = %addr, %error, "HTTP/1 handshake failed");
                    SendError::NotConnected
                })?;
        Ok(Conn {
            sender,
            driver: Some(Box::new(driver)),
            addr,
            reused: false,
        })
    }
}

/// Whether `error` says the engine closed the connection (before answering).
fn closed_by_peer(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}
