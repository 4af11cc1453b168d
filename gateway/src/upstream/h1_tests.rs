use bytes::BytesMut;

use super::*;

fn head_of(text: &str) -> (Result<Option<Head>, WireError>, BytesMut) {
    let mut buf = BytesMut::from(text.as_bytes());
    let head = parse_head(&mut buf);
    (head, buf)
}

/// Decodes all of `wire`, fed `step` bytes at a time, into the body and what
/// was left after its end.
fn decode_all(mut framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, bool, BytesMut) {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match framing.decode(&mut buf).expect("valid body") {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => return (body, true, buf),
            Decoded::More if fed >= wire.len() => return (body, false, buf),
            Decoded::More => {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn the_request_head_names_the_body_length_and_passes_accept_on() {
    let request = Request {
        path: "/v1/chat/completions?x=1",
        host: "10.0.0.7:8000".parse().expect("an address"),
        accept: Some(b"text/event-stream"),
        body: b"{\"a\":1}",
    };
    assert_eq!(
        String::from_utf8(request.head()).expect("ascii"),
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 10.0.0.7:8000\r\n\
         content-type: application/json\r\naccept: text/event-stream\r\n\
         content-length: 7\r\n\r\n"
    );
    assert!(valid_path("/v1/completions"));
    assert!(!valid_path("v1/completions"));
    assert!(!valid_path("/v1/x y"));
    assert!(!valid_path("/v1/\r\nhost: evil"));
}

#[test]
fn a_head_with_a_length_keeps_the_connection_and_leaves_the_body_in_the_buffer() {
    let (head, buf) = head_of(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello",
    );
    let head = head.expect("valid").expect("complete");
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.framing, Framing::Length(5));
    assert!(head.keep_alive);
    assert_eq!(head.headers["content-type"], "application/json");
    assert_eq!(&buf[..], b"hello");
}

#[test]
fn a_partial_head_asks_for_more_and_a_broken_one_is_refused() {
    let partial = "HTTP/1.1 200 OK\r\nContent-Le";
    let (head, buf) = head_of(partial);
    assert!(head.expect("valid so far").is_none());
    assert_eq!(
        &buf[..],
        partial.as_bytes(),
        "nothing is taken from a partial head"
    );
    assert!(head_of("HTTP/1.1 2x0 OK\r\n\r\n").0.is_err());
    assert!(
        head_of("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
            .0
            .is_err()
    );
    assert!(
        head_of("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n")
            .0
            .is_err()
    );
    let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
    assert!(matches!(head_of(&long).0, Err(WireError::HeadTooLong)));
}

#[test]
fn interim_answers_are_skipped_and_the_framing_follows_the_headers() {
    let (head, _) = head_of(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    );
    let head = head.expect("valid").expect("complete");
    assert_eq!(head.framing, Framing::Chunked(Chunk::Size));
    assert!(head.keep_alive);

    let cases = [
        // No length: to the end of the connection, which is not kept.
        ("HTTP/1.1 200 OK\r\n\r\n", Framing::Eof, false),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            Framing::Eof,
            false,
        ),
        // Chunked wins over a length.
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            Framing::Chunked(Chunk::Size),
            true,
        ),
        ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Length(0), true),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            Framing::Length(0),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
            Framing::Length(2),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n",
            Framing::Length(2),
            true,
        ),
    ];
    for (text, framing, keep_alive) in cases {
        let head = head_of(text).0.expect("valid").expect("complete");
        assert_eq!(
            (head.framing, head.keep_alive),
            (framing, keep_alive),
            "{text:?}"
        );
    }
    assert!(
        head_of("HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .0
            .is_err()
    );
}

#[test]
fn a_chunked_body_decodes_whole_however_it_is_split() {
    let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ntrailer: x\r\n\r\n";
    for step in [1, 2, 3, 7, wire.len()] {
        let (body, ended, rest) = decode_all(Framing::Chunked(Chunk::Size), wire, step);
        assert_eq!(&body, b"hello, world", "step {step}");
        assert!(ended, "step {step}");
        assert!(rest.is_empty(), "step {step}");
    }
}

#[test]
fn a_length_body_ends_at_its_length_and_leaves_what_follows() {
    let (body, ended, rest) = decode_all(Framing::Length(5), b"helloHTTP", 2);
    assert_eq!(&body, b"hello");
    assert!(ended);
    assert_eq!(&rest[..], b"H", "only what was read past the end stays");
    let (body, ended, _) = decode_all(Framing::Length(9), b"short", 64);
    assert_eq!(&body, b"short");
    assert!(!ended, "a body cut short has not ended");
}

#[test]
fn the_end_of_a_chunked_body_already_read_is_seen_without_another_read() {
    let mut framing = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(&b"2\r\nhi\r\n0\r\n\r\n"[..]);
    assert_eq!(
        framing.decode(&mut buf).expect("valid"),
        Decoded::Data(bytes::Bytes::from_static(b"hi"))
    );
    framing.settle(&mut buf).expect("valid");
    assert_eq!(framing, Framing::Done);
    assert_eq!(framing.remaining(), Some(0));
    assert!(buf.is_empty());
}

#[test]
fn broken_chunks_are_refused() {
    for wire in [
        &b"zz\r\n"[..],
        b"2\r\nhiX\r\n",
        b"\r\n",
        b"12345678123456781\r\n",
    ] {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(wire);
        let mut failed = false;
        for _ in 0..4 {
            match framing.decode(&mut buf) {
                Err(_) => {
                    failed = true;
                    break;
                }
                Ok(Decoded::Data(_)) => continue,
                Ok(_) => break,
            }
        }
        assert!(failed, "{wire:?}");
    }
    let mut framing = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(vec![b'1'; MAX_LINE + 1].as_slice());
    assert!(framing.decode(&mut buf).is_err(), "an endless size line");
}

#[test]
fn the_host_is_written_as_display_writes_the_address() {
    for addr in [
        "0.0.0.0:0",
        "10.0.0.7:8000",
        "255.255.255.255:65535",
        "127.0.0.1:9",
        "[::1]:8080",
        "[fd00::a:1]:80",
    ] {
        let addr: std::net::SocketAddr = addr.parse().expect("an address");
        let mut out = Vec::new();
        write_addr(&mut out, addr);
        assert_eq!(String::from_utf8(out).expect("ascii"), addr.to_string());
    }
    for n in [0u64, 7, 10, 99, 1_000, u64::MAX] {
        let mut out = Vec::new();
        write_decimal(&mut out, n);
        assert_eq!(String::from_utf8(out).expect("ascii"), n.to_string());
    }
}

#[test]
fn the_hops_headers_are_read_for_the_framing_and_not_kept() {
    let (head, _) = head_of(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\n\
         Transfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\n\
         Proxy-Connection: close\r\nContent-Type: text/event-stream\r\nX-Request-Id: 7\r\n\r\n",
    );
    let head = head.expect("valid").expect("complete");
    assert_eq!(head.framing, Framing::Chunked(Chunk::Size));
    let names: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["content-type", "x-request-id"]);
    assert_eq!(head.headers["x-request-id"], "7");
}
