//! Finding the engine's `usage` in a response body as it passes: in the
//! server-sent events of a stream, or in a JSON document, keeping only
//! bounded parts of the body.

use bytes::Bytes;

use super::*;

/// Longest SSE line kept while looking for `usage`; longer lines (huge
/// content chunks) pass through unexamined.
pub(super) const MAX_SSE_LINE: usize = 1 << 20;
/// How much of the start and of the end of a JSON response is kept to find
/// its `usage`: the whole body when it fits in the start.
pub(super) const JSON_WINDOW: usize = 1 << 20;

/// Finds the `usage` in a response body as it passes, keeping only bounded
/// parts of it; the bytes themselves go to the client untouched.
#[derive(Debug)]
pub(crate) enum UsageScanner {
    /// `text/event-stream`: every `data:` line carrying a `usage` is parsed;
    /// the last one seen counts (engines that report usage on every chunk
    /// report running totals).
    Sse {
        line: Vec<u8>,
        skipping: bool,
        usage: Option<Usage>,
        done: bool,
    },
    /// A JSON document: parsed whole when small, else its `usage` is looked
    /// for in the first and last [`JSON_WINDOW`] bytes. A body that comes in
    /// one piece (most do) is kept as it came, not copied.
    Json {
        whole: Option<Bytes>,
        head: Vec<u8>,
        tail: Vec<u8>,
        overflowed: bool,
    },
}

impl UsageScanner {
    pub(crate) fn sse() -> Self {
        UsageScanner::Sse {
            line: Vec::new(),
            skipping: false,
            usage: None,
            done: false,
        }
    }

    pub(crate) fn json() -> Self {
        UsageScanner::Json {
            whole: None,
            head: Vec::new(),
            tail: Vec::new(),
            overflowed: false,
        }
    }

    /// [`feed`](Self::feed), for a piece of the body as it is passed on: the
    /// first piece of a JSON body is kept by reference.
    pub(crate) fn feed_bytes(&mut self, bytes: &Bytes) -> bool {
        if let UsageScanner::Json {
            whole, head, tail, ..
        } = self
            && whole.is_none()
            && head.is_empty()
            && tail.is_empty()
            && bytes.len() <= JSON_WINDOW
        {
            *whole = Some(bytes.clone());
            return false;
        }
        // Any other piece: `feed` copies a first one kept before it.
        self.feed(bytes)
    }

    /// Looks at the next bytes of the body. Returns true once the stream has
    /// said it is complete (`data: [DONE]`), so usage can be settled before
    /// those bytes reach the client.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        match self {
            UsageScanner::Sse {
                line,
                skipping,
                usage,
                done,
            } => {
                let mut rest = bytes;
                loop {
                    let end = rest.iter().position(|&b| b == b'\n');
                    let part = &rest[..end.unwrap_or(rest.len())];
                    if !*skipping {
                        if line.len() + part.len() > MAX_SSE_LINE {
                            line.clear();
                            *skipping = true;
                        } else {
                            line.extend_from_slice(part);
                        }
                    }
                    let Some(end) = end else { break };
                    if !*skipping {
                        match sse_line(line) {
                            SseLine::Usage(u) => *usage = Some(u),
                            SseLine::Done => *done = true,
                            SseLine::Other => {}
                        }
                    }
                    line.clear();
                    *skipping = false;
                    rest = &rest[end + 1..];
                }
                *done
            }
            UsageScanner::Json {
                whole,
                head,
                tail,
                overflowed,
            } => {
                if let Some(first) = whole.take() {
                    head.extend_from_slice(&first);
                }
                let room = JSON_WINDOW.saturating_sub(head.len());
                let (to_head, rest) = bytes.split_at(room.min(bytes.len()));
                head.extend_from_slice(to_head);
                if !rest.is_empty() {
                    *overflowed = true;
                    tail.extend_from_slice(rest);
                    if tail.len() > 2 * JSON_WINDOW {
                        tail.drain(..tail.len() - JSON_WINDOW);
                    }
                }
                false
            }
        }
    }

    /// The usage found, once the body has ended (or was cut off).
    pub(crate) fn usage(&mut self) -> Option<Usage> {
        match self {
            UsageScanner::Sse {
                line,
                skipping,
                usage,
                ..
            } => {
                if !*skipping && let SseLine::Usage(u) = sse_line(line) {
                    *usage = Some(u);
                }
                *usage
            }
            UsageScanner::Json {
                whole,
                head,
                tail,
                overflowed,
            } => {
                if let Some(whole) = whole {
                    return Usage::of_json(whole);
                }
                if !*overflowed {
                    return Usage::of_json(head);
                }
                usage_after_last_key(tail).or_else(|| usage_after_last_key(head))
            }
        }
    }
}

enum SseLine {
    Usage(Usage),
    Done,
    Other,
}

fn sse_line(line: &[u8]) -> SseLine {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return SseLine::Other;
    };
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        return SseLine::Done;
    }
    // Most chunks carry no usage: skip parsing them.
    if !contains(data, b"\"usage\"") {
        return SseLine::Other;
    }
    match Usage::of_json(data) {
        Some(usage) => SseLine::Usage(usage),
        None => SseLine::Other,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The object following the last `"usage":` in a fragment of JSON.
fn usage_after_last_key(fragment: &[u8]) -> Option<Usage> {
    let key = b"\"usage\"";
    let at = fragment.windows(key.len()).rposition(|w| w == key)?;
    let rest = fragment[at + key.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?;
    let value = serde_json::Deserializer::from_slice(rest)
        .into_iter::<Value>()
        .next()?
        .ok()?;
    Usage::from_object(&value)
}
