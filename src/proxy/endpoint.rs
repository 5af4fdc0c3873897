//! What a link needs from the two things it connects.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// A bidirectional byte stream that can be read and written from two tasks' worth of futures
/// at once through shared references, so one connection's two directions can run side by
/// side without splitting the socket.
pub trait Endpoint: Sync {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;
    /// Send end-of-stream to the peer while still reading from it (TCP half-close).
    fn shutdown_write(&self) -> io::Result<()>;
    /// End the connection to the peer both ways: it reads EOF, and our reads of it end.
    fn shutdown_both(&self);
    /// Make the coming close abort the connection (TCP RST) instead of closing it.
    fn reset_on_close(&self);
}

impl Endpoint for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, data)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }

    fn shutdown_both(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both);
    }

    fn reset_on_close(&self) {
        // Linger 0 turns close() into an abort: the kernel sends RST and drops unsent data.
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}
