//! Lingering close: a connection the server closes while its client may still be sending (a
//! request refused before its body was read: 503 over the memory budget, 413, 401) is not
//! closed at once. Closing a socket with unread data makes the kernel answer with a reset,
//! and a client still writing then sees a broken pipe instead of the answer it was sent.
//!
//! As nginx's lingering close: after the answer, the write side is shut (the client reads the
//! answer and an end of stream), then whatever still arrives is read and thrown away — never
//! kept — until the client closes its side, nothing arrives for [`IDLE`], [`LIMIT`] has passed
//! or [`MAX_BYTES`] were thrown away. Only then is the socket closed. A connection the client
//! closed first costs one read.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep, sleep},
};

/// How long the whole drain may take.
pub const LIMIT: Duration = Duration::from_secs(10);
/// How long the drain waits for the next bytes.
pub const IDLE: Duration = Duration::from_secs(2);
/// How much is thrown away at most.
pub const MAX_BYTES: u64 = 256 << 20;

/// A stream whose shutdown lingers as the module says.
pub struct Lingering<S> {
    inner: S,
    drain: Option<Drain>,
}

struct Drain {
    thrown_away: u64,
    until: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
}

impl<S> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, drain: None }
    }
}

impl<S: AsyncRead + Unpin> Lingering<S> {
    /// Read and throw away until the drain is over (see the module).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(drain) = self.drain.as_mut() else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 8192];
        loop {
            if drain.thrown_away >= MAX_BYTES
                || drain.until.as_mut().poll(cx).is_ready()
                || drain.idle.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {
                    drain.thrown_away += buf.filled().len() as u64;
                    drain.idle.as_mut().reset(Instant::now() + IDLE);
                }
                // The client closed its side (or the connection broke): nothing to wait for.
                Ok(()) | Err(_) => return Poll::Ready(()),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// The answer is out: shut the write side, then drain (see the module).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.drain.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let now = Instant::now();
            this.drain = Some(Drain {
                thrown_away: 0,
                until: Box::pin(sleep(LIMIT)),
                idle: Box::pin(tokio::time::sleep_until(now + IDLE)),
            });
        }
        ready!(this.poll_drain(cx));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    /// The server answers without reading a large body and closes; the client, still writing
    /// at full speed, finishes its writes and then reads the whole answer.
    #[tokio::test]
    async fn a_client_still_sending_gets_the_answer_not_a_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..20 {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = Lingering::new(stream);
                let mut head = [0u8; 64];
                let _ = stream.read(&mut head).await.unwrap();
                stream
                    .write_all(b"HTTP/1.1 503 Busy\r\n\r\n")
                    .await
                    .unwrap();
                stream.shutdown().await.unwrap();
            }
        });
        for _ in 0..20 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..8 {
                client.write_all(&chunk).await.expect("no broken pipe");
            }
            client.shutdown().await.unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            assert_eq!(answer, "HTTP/1.1 503 Busy\r\n\r\n");
        }
        server.await.unwrap();
    }

    /// A client that never stops sending is cut off after MAX_BYTES or LIMIT: the drain is
    /// bounded in time (paused clock) and nothing is kept.
    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_when_nothing_arrives() {
        let (server, mut client) = tokio::io::duplex(1024);
        client.write_all(b"partial body").await.unwrap();
        let mut lingering = Lingering::new(server);
        let started = Instant::now();
        lingering.shutdown().await.unwrap();
        assert!(started.elapsed() >= IDLE && started.elapsed() < LIMIT);
    }
}
