//! The response body type of every response the server sends.
//!
//! Three shapes, chosen so that the hot path of blob serving allocates
//! nothing beyond the `Bytes` it hands out:
//! - [`Body::empty`]: no bytes (304, HEAD, 204).
//! - [`Body::full`]: one `Bytes` already in hand (small ranges, JSON).
//! - [`Body::pieces`]: a few `Bytes` in hand (a range spanning two chunks),
//!   sent one after the other rather than copied together.
//! - [`Body::stream`]: chunks arriving over a bounded channel from a producer
//!   (a blocking task reading the blob store), so a large range streams with
//!   backpressure and never sits in memory whole; when hyper drops the body
//!   (the client went away) the receiver drops and the producer's next send
//!   fails, which stops it.
//!
//! **Invariant:** a body whose length is known reports it exactly through
//! `size_hint`, so hyper frames the response with `Content-Length` and never
//! with chunked encoding. A sized stream that delivers fewer or more bytes
//! than declared yields an error instead of a silently short or long body,
//! so hyper aborts the connection rather than lying about the framing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// How many chunks a streaming producer may run ahead of the socket. Small on
/// purpose: each in-flight chunk is memory held per connection.
pub const STREAM_CHANNEL_CAPACITY: usize = 4;

/// The sending half given to a streaming producer; see [`Body::channel`].
pub type BodySender = mpsc::Sender<Result<Bytes, io::Error>>;

/// The receiving half wrapped by [`Body::stream`].
pub type BodyReceiver = mpsc::Receiver<Result<Bytes, io::Error>>;

/// A response body: empty, one buffer, or a bounded stream of chunks.
#[derive(Debug)]
pub struct Body {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    /// `None` once the buffer has been handed to hyper.
    Full(Option<Bytes>),
    /// Several buffers in order (a range spanning chunks, read inline),
    /// with the bytes still to come.
    Pieces {
        pieces: std::vec::IntoIter<Bytes>,
        remaining_bytes: u64,
    },
    Stream {
        rx: BodyReceiver,
        /// Bytes still owed when the length is known; `None` when unknown.
        remaining_bytes: Option<u64>,
    },
}

impl Body {
    /// A body with no bytes.
    pub const fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// A body made of one buffer (zero-copy: the `Bytes` is handed out as is).
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        if data.is_empty() {
            return Self::empty();
        }
        Self {
            kind: Kind::Full(Some(data)),
        }
    }

    /// A body made of several buffers sent one after another, uncopied.
    pub fn pieces(pieces: Vec<Bytes>) -> Self {
        let remaining_bytes = pieces.iter().map(|p| p.len() as u64).sum();
        if remaining_bytes == 0 {
            return Self::empty();
        }
        Self {
            kind: Kind::Pieces {
                pieces: pieces.into_iter(),
                remaining_bytes,
            },
        }
    }

    /// A body of exactly `length_bytes` bytes arriving over `rx`. The producer
    /// sends chunks (`Ok`) or one error (`Err`, which aborts the response).
    pub fn stream(rx: BodyReceiver, length_bytes: u64) -> Self {
        Self {
            kind: Kind::Stream {
                rx,
                remaining_bytes: Some(length_bytes),
            },
        }
    }

    /// A body of unknown length arriving over `rx` (hyper frames it chunked
    /// on HTTP/1.1; never used for blobs).
    pub fn stream_unsized(rx: BodyReceiver) -> Self {
        Self {
            kind: Kind::Stream {
                rx,
                remaining_bytes: None,
            },
        }
    }

    /// A bounded channel for a streaming producer and the body of exactly
    /// `length_bytes` that drains it.
    pub fn channel(length_bytes: u64) -> (BodySender, Self) {
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        (tx, Self::stream(rx, length_bytes))
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl From<String> for Body {
    fn from(data: String) -> Self {
        Self::full(data)
    }
}

impl From<&'static str> for Body {
    fn from(data: &'static str) -> Self {
        Self::full(Bytes::from_static(data.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(data: Vec<u8>) -> Self {
        Self::full(data)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Pieces {
                pieces,
                remaining_bytes,
            } => {
                for piece in pieces.by_ref() {
                    if !piece.is_empty() {
                        *remaining_bytes -= piece.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(piece))));
                    }
                }
                Poll::Ready(None)
            }
            Kind::Stream {
                rx,
                remaining_bytes,
            } => {
                if *remaining_bytes == Some(0) {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => {
                        if let Some(remaining) = remaining_bytes {
                            let len = chunk.len() as u64;
                            if len > *remaining {
                                *remaining = 0;
                                return Poll::Ready(Some(Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "body producer sent more bytes than the declared length",
                                ))));
                            }
                            *remaining -= len;
                        }
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // One error ends the body: later polls report its end.
                        *remaining_bytes = Some(0);
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(None) => match remaining_bytes {
                        None => Poll::Ready(None),
                        Some(remaining) => {
                            let missing = *remaining;
                            *remaining = 0;
                            Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("body producer stopped {missing} bytes short"),
                            ))))
                        }
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(data) => data.is_none(),
            Kind::Pieces {
                remaining_bytes, ..
            } => *remaining_bytes == 0,
            Kind::Stream {
                remaining_bytes, ..
            } => *remaining_bytes == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Pieces {
                remaining_bytes, ..
            } => SizeHint::with_exact(*remaining_bytes),
            Kind::Stream {
                remaining_bytes, ..
            } => match remaining_bytes {
                Some(n) => SizeHint::with_exact(*n),
                None => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::future::poll_fn;

    async fn next(body: &mut Body) -> Option<Result<Bytes, io::Error>> {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|r| r.map(|f| f.into_data().unwrap_or_default()))
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn empty_and_full_report_exact_sizes() {
        run(async {
            let mut b = Body::empty();
            assert_eq!(b.size_hint().exact(), Some(0));
            assert!(b.is_end_stream());
            assert!(next(&mut b).await.is_none());

            let mut b = Body::full(Bytes::from_static(b"hello"));
            assert_eq!(b.size_hint().exact(), Some(5));
            assert!(!b.is_end_stream());
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "hello");
            assert!(b.is_end_stream());
            assert_eq!(b.size_hint().exact(), Some(0));
            assert!(next(&mut b).await.is_none());

            assert!(Body::full(Bytes::new()).is_end_stream());
        });
    }

    #[test]
    fn pieces_are_sent_in_order_with_exact_sizes() {
        run(async {
            let mut b = Body::pieces(vec![
                Bytes::from_static(b"ab"),
                Bytes::new(),
                Bytes::from_static(b"cde"),
            ]);
            assert_eq!(b.size_hint().exact(), Some(5));
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "ab");
            assert_eq!(b.size_hint().exact(), Some(3));
            assert!(!b.is_end_stream());
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "cde");
            assert!(b.is_end_stream());
            assert!(next(&mut b).await.is_none());
            assert!(Body::pieces(vec![Bytes::new()]).is_end_stream());
        });
    }

    #[test]
    fn sized_stream_counts_down_and_ends() {
        run(async {
            let (tx, mut b) = Body::channel(6);
            assert_eq!(b.size_hint().exact(), Some(6));
            tokio::spawn(async move {
                tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
                tx.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
            });
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "abc");
            assert_eq!(b.size_hint().exact(), Some(3));
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "def");
            assert!(b.is_end_stream());
            assert!(next(&mut b).await.is_none());
        });
    }

    #[test]
    fn short_or_long_stream_is_an_error() {
        run(async {
            let (tx, mut b) = Body::channel(10);
            tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
            drop(tx);
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "abc");
            let e = next(&mut b).await.unwrap().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert!(next(&mut b).await.is_none());

            let (tx, mut b) = Body::channel(2);
            tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
            let e = next(&mut b).await.unwrap().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(next(&mut b).await.is_none());
        });
    }

    #[test]
    fn producer_error_ends_the_body() {
        run(async {
            let (tx, mut b) = Body::channel(10);
            tx.send(Err(io::Error::other("disk"))).await.unwrap();
            assert!(next(&mut b).await.unwrap().is_err());
            assert!(b.is_end_stream());
            assert!(next(&mut b).await.is_none());
        });
    }

    #[test]
    fn dropping_the_body_stops_the_producer() {
        let (tx, b) = Body::channel(1 << 30);
        drop(b);
        assert!(tx.blocking_send(Ok(Bytes::from_static(b"x"))).is_err());
    }

    #[test]
    fn unsized_stream_has_no_exact_hint() {
        run(async {
            let (tx, rx) = mpsc::channel(1);
            let mut b = Body::stream_unsized(rx);
            assert_eq!(b.size_hint().exact(), None);
            tx.send(Ok(Bytes::from_static(b"z"))).await.unwrap();
            drop(tx);
            assert_eq!(next(&mut b).await.unwrap().unwrap(), "z");
            assert!(next(&mut b).await.is_none());
        });
    }
}
