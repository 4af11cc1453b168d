use super::*;

/// Feeds `stream` to an SSE scanner in chunks of `size` bytes: whether it saw
/// the end of the stream, and the usage it read.
fn scan_sse(stream: &[u8], size: usize) -> (bool, Option<Usage>) {
    let mut scanner = UsageScanner::sse();
    let mut done = false;
    for chunk in stream.chunks(size) {
        done = scanner.feed(chunk);
    }
    (done, scanner.usage())
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Option<Usage> {
    Some(Usage {
        prompt_tokens,
        completion_tokens,
    })
}

#[test]
fn sse_usage_split_across_chunks() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\r\n\r\n",
        "data: [DONE]\n\n"
    );
    assert_eq!(scan_sse(stream.as_bytes(), 7), (true, usage(12, 3)));
}

#[test]
fn usage_of_json_reads_as_a_parsed_document_does() {
    let documents: [&[u8]; 25] = [
        br#"{"a":"\uDbff\udc00","usage":{"prompt_tokens":3}}"#,
        br#"{"a":"\udc00","usage":{"prompt_tokens":3}}"#,
        br#"{"a":"\u00e9\\ud800","usage":{"prompt_tokens":3}}"#,
        b"{\"a\":\"\xff\",\"usage\":{\"prompt_tokens\":3}}",
        b"{\"a\":\"\x01\",\"usage\":{\"prompt_tokens\":3}}",
        br#"{"a":[1,{"b":"\q"}],"usage":{"prompt_tokens":3}}"#,
        br#"{"usage":{"prompt_tokens":3,"prompt_tokens":6,"completion_tokens":true}}"#,
        br#"{"usage":{"prompt_tokens":"3","completion_tokens":[1],"x":{"prompt_tokens":1}}}"#,
        br#"{"usage":{"prompt_\u0074okens":11,"completion_tokens":18446744073709551615}}"#,
        br#"{"usage":{"prompt_tokens":18446744073709551616,"completion_tokens":1e2}}"#,
        br#"{"usage":[1,2],"x":1}"#,
        br#"{"usage":{"prompt_tokens":1,"bad":"\ud800"}}"#,
        br#"{"usage":7}"#,
        br#"{"id":"x","choices":[{"delta":{"content":"usage"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":5}}"#,
        br#"{"us\u0061ge":{"prompt_tokens":7}}"#,
        br#"{"usage":null}"#,
        br#"{"usage":{"prompt_tokens":1.5,"completion_tokens":-1}}"#,
        br#"{"nested":{"usage":{"prompt_tokens":9}}}"#,
        br#"[{"usage":{"prompt_tokens":9}}]"#,
        br#""usage""#,
        br#"{"usage":{"prompt_tokens":2}} trailing"#,
        br#"{"usage":{"prompt_tokens":2}"#,
        b" { \"usage\" : { \"completion_tokens\" : 8 } } ",
        br#"{"a":"\ud800","usage":{"prompt_tokens":2}}"#,
    ];
    for document in documents {
        let parsed = serde_json::from_slice::<Value>(document)
            .ok()
            .and_then(|v| Usage::of(&v));
        assert_eq!(
            Usage::of_json(document),
            parsed,
            "{}",
            String::from_utf8_lossy(document)
        );
    }
}

#[test]
fn sse_lines_over_the_limit_are_skipped_whole() {
    let mut long = b"data: {\"usage\":{\"prompt_tokens\":99}, \"x\":\"".to_vec();
    long.resize(MAX_SSE_LINE + 10, b'a');
    long.extend_from_slice(b"\"}\n\n");
    long.extend_from_slice(b"data: {\"usage\":{\"prompt_tokens\":5}}\n\ndata: [DONE]\n\n");
    for size in [1, 7, 4096, long.len()] {
        assert_eq!(
            scan_sse(&long, size),
            (true, usage(5, 0)),
            "chunks of {size}"
        );
    }
    // A line of exactly the limit is still read.
    let mut exact = b"data: {\"usage\":{\"prompt_tokens\":6},\"x\":\"".to_vec();
    exact.resize(MAX_SSE_LINE - 2, b'a');
    exact.extend_from_slice(b"\"}");
    assert_eq!(exact.len(), MAX_SSE_LINE);
    exact.push(b'\n');
    let mut scanner = UsageScanner::sse();
    scanner.feed(&exact);
    assert_eq!(scanner.usage().map(|u| u.prompt_tokens), Some(6));
}

#[test]
fn json_usage_small_and_large() {
    let mut small = UsageScanner::json();
    small.feed(br#"{"usage":{"prompt_tokens":4,"total_tokens":4},"data":[]}"#);
    assert_eq!(small.usage(), usage(4, 0));
    // In one piece (kept as it came) or in several (copied): the same.
    let document = br#"{"usage":{"prompt_tokens":4,"completion_tokens":2},"data":[]}"#;
    let mut whole = UsageScanner::json();
    whole.feed_bytes(&bytes::Bytes::from_static(document));
    assert_eq!(whole.usage(), usage(4, 2));
    let mut pieces = UsageScanner::json();
    for piece in document.chunks(5) {
        pieces.feed_bytes(&bytes::Bytes::copy_from_slice(piece));
    }
    assert_eq!(pieces.usage(), usage(4, 2));
    let mut large = UsageScanner::json();
    large.feed(b"{\"data\":[");
    let filler = vec![b'1'; JSON_WINDOW];
    large.feed(&filler);
    large.feed(&filler);
    large.feed(br#"],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#);
    assert_eq!(large.usage(), usage(9, 1));
}
