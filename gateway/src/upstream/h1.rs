//! HTTP/1.1 on the wire towards an engine: the request the gateway sends
//! (always a POST of a JSON body with its length), the response head
//! (parsed by `httparse`, the parser hyper itself uses), and the body's
//! framing (a length, chunks, or until the engine closes).
//!
//! This is the whole of what the gateway asks of HTTP/1.1 on that hop: one
//! request at a time on a connection, no upgrades, no `Expect`. Keeping it to
//! that lets a connection be a socket and one read buffer (4 KiB to start),
//! where hyper's client connection keeps a request queue and 8 KiB read and
//! write buffers (about 30 KiB each, by a heap profile): at hundreds of
//! streams at once, the largest part of the gateway's memory.

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Longest response head accepted.
pub(crate) const MAX_HEAD: usize = 64 << 10;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4 << 10;

/// What is sent: `POST path` with a JSON body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// The path and query, as the client sent them.
    pub path: &'a str,
    /// The `Host` header: the endpoint's address.
    pub host: SocketAddr,
    /// The client's `Accept`, passed on when it sent one.
    pub accept: Option<&'a [u8]>,
    /// The JSON body.
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The request line and headers, up to and including the empty line.
    pub(crate) fn head(&self) -> Vec<u8> {
        let mut head = Vec::with_capacity(192 + self.path.len());
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(self.path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        write_addr(&mut head, self.host);
        head.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
        if let Some(accept) = self.accept {
            head.extend_from_slice(b"accept: ");
            head.extend_from_slice(accept);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"content-length: ");
        write_decimal(&mut head, self.body.len() as u64);
        head.extend_from_slice(b"\r\n\r\n");
        head
    }
}

/// `addr` as `Display` writes it, without the formatting machinery for the
/// usual IPv4 address (every request's `Host`).
fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_decimal(out, u64::from(octet));
            }
            out.push(b':');
            write_decimal(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => out.extend_from_slice(addr.to_string().as_bytes()),
    }
}

/// `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Whether `path` may go on a request line: it starts with `/` and holds no
/// whitespace or control characters.
pub(crate) fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())
}

/// Headers that describe one hop, not the message: read for the framing,
/// never passed on.
const HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// A response head: its headers without those of the hop ([`HOP_BY_HOP`]).
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may take another request after this answer.
    pub keep_alive: bool,
}

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("the engine's response is not valid HTTP/1.1: {0}")]
    Invalid(&'static str),
    #[error("the engine's response head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
}

impl From<WireError> for std::io::Error {
    fn from(error: WireError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }
}

/// Parses the response head at the start of `buf`, and takes it (and any
/// interim `1xx` answers before it) off `buf`. `None`: the head is not all
/// there yet.
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, WireError> {
    loop {
        // Uninitialised: nothing is written to the lines the head does not have.
        let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut lines,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(WireError::HeadTooLong);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(WireError::Invalid("too many header lines"));
            }
            Err(_) => return Err(WireError::Invalid("malformed head")),
        };
        let code = response.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| WireError::Invalid("bad status"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(WireError::Invalid("an upgrade was not asked for"));
            }
            // `100 Continue` and the like: the answer follows.
            buf.advance(len);
            continue;
        }
        let http11 = response.version == Some(1);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut coded = false;
        let mut close = !http11;
        // Where each line's name and value are in the head: the values are
        // then taken from the head as it is, not copied.
        let base = buf.as_ptr() as usize;
        // (The head is at most MAX_HEAD bytes: its offsets fit in u32.)
        let span = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            [start as u32, (start + part.len()) as u32]
        };
        let mut spans = [[0u32; 4]; MAX_HEADERS];
        let count = response.headers.len();
        for (line, at) in response.headers.iter().zip(spans.iter_mut()) {
            let name = HeaderName::from_bytes(line.name.as_bytes())
                .map_err(|_| WireError::Invalid("bad header name"))?;
            let ([name_start, name_end], [value_start, value_end]) =
                (span(line.name.as_bytes()), span(line.value));
            *at = [name_start, name_end, value_start, value_end];
            if name == http::header::CONTENT_LENGTH {
                let n = std::str::from_utf8(line.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(WireError::Invalid("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(WireError::Invalid("conflicting content-length"));
                }
                length = Some(n);
            } else if name == http::header::TRANSFER_ENCODING {
                coded = true;
                chunked = last_token(line.value).eq_ignore_ascii_case(b"chunked");
            } else if name == http::header::CONNECTION {
                for token in line.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                        close = false;
                    }
                }
            }
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for [name_start, name_end, value_start, value_end] in spans.into_iter().take(count) {
            let (name, value) = (
                name_start as usize..name_end as usize,
                value_start as usize..value_end as usize,
            );
            let name = HeaderName::from_bytes(&head[name])
                .map_err(|_| WireError::Invalid("bad header name"))?;
            if HOP_BY_HOP.contains(&name) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| WireError::Invalid("bad header value"))?;
            headers.append(name, value);
        }
        let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else if coded {
            // A transfer coding that does not end in chunked: the body runs
            // to the end of the connection.
            Framing::Eof
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Eof
        };
        let keep_alive = !close && framing != Framing::Eof;
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// How a body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of the coding.
    Chunked(Chunk),
    /// Until the engine closes the connection.
    Eof,
    /// The body has ended.
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data comes next.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailer,
}

/// What the buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// The next bytes of the body.
    Data(bytes::Bytes),
    /// The body has ended.
    End,
    /// More must be read first.
    More,
}

impl Framing {
    /// Takes the next piece of the body off `buf`: at most what `buf` holds,
    /// never more than the body has.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        self.settle(buf)?;
        match self {
            Framing::Done => Ok(Decoded::End),
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if let Framing::Chunked(chunk @ Chunk::Data(0)) = self {
                    *chunk = Chunk::DataEnd;
                }
                Ok(Decoded::Data(data))
            }
            Framing::Eof if buf.is_empty() => Ok(Decoded::More),
            Framing::Eof => Ok(Decoded::Data(buf.split().freeze())),
            // A size or trailer line, or a CRLF, not all read yet.
            Framing::Chunked(_) => Ok(Decoded::More),
        }
    }

    /// Moves past what `buf` holds that carries no data (the CRLF after a
    /// chunk, the next chunk's size line, the last chunk and the trailers),
    /// so that a body whose end has been read says so before it is polled
    /// again.
    pub(crate) fn settle(&mut self, buf: &mut BytesMut) -> Result<(), WireError> {
        loop {
            match *self {
                Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(());
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Invalid("a chunk's data is not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(());
                    };
                    *self = match chunk_size(&line)? {
                        0 => Framing::Chunked(Chunk::Trailer),
                        n => Framing::Chunked(Chunk::Data(n)),
                    };
                }
                Framing::Chunked(Chunk::Trailer) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(());
                    };
                    if line.is_empty() {
                        *self = Framing::Done;
                        return Ok(());
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Bytes of the body left, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            Framing::Done => Some(0),
            _ => None,
        }
    }
}

/// Takes one line (without its line end) off `buf`; `None` until it is all there.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() > MAX_LINE {
            Err(WireError::Invalid(
                "a chunk-size or trailer line is too long",
            ))
        } else {
            Ok(None)
        };
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line))
}

/// The size on a chunk-size line (hexadecimal, extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.len() <= 15)
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .ok_or(WireError::Invalid("bad chunk size"))
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
