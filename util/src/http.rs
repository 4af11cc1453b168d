//! Small HTTP fetches: one request sent with hyper's client, its answer's
//! body read whole but only up to a size limit, all within a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;

/// Why [`fetch`] brought back no body.
///
/// Its text does not name the URL: the caller knows it. A failed request
/// keeps the client's error as its source, so that the whole chain of causes
/// can be told.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request was not sent, or no answer's head came back.
    #[error(transparent)]
    Request(#[from] hyper_util::client::legacy::Error),
    /// The answer's status is not a success.
    #[error("HTTP {0}")]
    Status(StatusCode),
    /// The body could not be read, or is longer than the limit.
    #[error(transparent)]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The whole answer did not come within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Sends `request` and returns its answer's body, when the answer's status
/// is a success and its body at most `limit` bytes long, all within
/// `timeout`.
pub async fn fetch<C, B>(
    client: &Client<C, B>,
    request: Request<B>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, FetchError>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let answer = async {
        let response = client.request(request).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(FetchError::Body)?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::Empty;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server answering every connection with `answer` once its request
    /// is read (or with nothing when `answer` is `None`).
    async fn server(answer: Option<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("the port's address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    match answer {
                        Some(answer) => {
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                        None => std::future::pending().await,
                    }
                });
            }
        });
        addr
    }

    async fn get(addr: SocketAddr, limit: usize) -> Result<Bytes, FetchError> {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        fetch(&client, request, limit, Duration::from_millis(500)).await
    }

    #[tokio::test]
    async fn a_successful_answer_gives_its_body() {
        let addr = server(Some("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
        let body = get(addr, 5).await.expect("the body");
        assert_eq!(body, Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn another_status_is_an_error() {
        let addr = server(Some("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")).await;
        let error = get(addr, 5).await.expect_err("a 404");
        assert!(matches!(error, FetchError::Status(StatusCode::NOT_FOUND)));
        assert_eq!(error.to_string(), "HTTP 404 Not Found");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_an_error() {
        let addr = server(Some("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
        let error = get(addr, 4).await.expect_err("too long");
        assert!(matches!(error, FetchError::Body(_)));
        assert_eq!(error.to_string(), "length limit exceeded");
    }

    #[tokio::test]
    async fn no_answer_is_a_timeout() {
        let addr = server(None).await;
        let error = get(addr, 5).await.expect_err("no answer");
        assert_eq!(error.to_string(), "no answer within 500ms");
    }

    #[tokio::test]
    async fn a_refused_connection_tells_its_cause() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a local port");
            listener.local_addr().expect("the port's address")
        };
        let error = get(addr, 5).await.expect_err("nobody listens");
        assert!(matches!(error, FetchError::Request(_)));
        assert!(std::error::Error::source(&error).is_some());
    }
}
