//! What a link needs from the two things it connects.

use std::future::Future;
use std::io;

use bytes::Bytes;
use tokio::net::TcpStream;

/// A bidirectional byte stream that can be read and written from two tasks' worth of futures
/// at once through shared references, so one connection's two directions can run side by
/// side without splitting the socket.
pub trait Endpoint: Sync {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;
    /// Send end-of-stream to the peer while still reading from it (TCP half-close).
    fn shutdown_write(&self) -> io::Result<()>;
    /// End the connection to the peer both ways: it reads EOF, and our reads of it end.
    fn shutdown_both(&self);
    /// Make the coming close abort the connection (TCP RST) instead of closing it.
    fn reset_on_close(&self);

    /// Kill the peer with `signal` where it is a process, and return true: its output will
    /// end by itself. Elsewhere reset it and return false.
    fn kill(&self, _signal: i32) -> bool {
        self.reset_on_close();
        false
    }

    /// Move up to `max` bytes straight from `self` to `dst` without copying them through
    /// user space. `None` where the endpoint cannot; `Err` is a read-side error.
    fn splice_to(&self, _dst: &Self, _max: usize) -> Option<io::Result<Spliced>> {
        None
    }
}

/// What one [`Endpoint::splice_to`] did.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes taken from the source; 0 means it reached EOF.
    pub read: usize,
    /// Bytes the destination took.
    pub written: usize,
    /// Bytes read but not written (the destination was full or failed), in order.
    pub rest: Option<Bytes>,
    pub write_error: Option<io::Error>,
}

impl Endpoint for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
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

    #[cfg(target_os = "linux")]
    fn splice_to(&self, dst: &Self, max: usize) -> Option<io::Result<Spliced>> {
        splice::socket_to_socket(self, dst, max)
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use bytes::Bytes;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::Spliced;

    thread_local! {
        /// One pipe per thread, empty whenever control leaves `socket_to_socket`, so it can be
        /// shared by every connection this thread serves. `None` if no pipe could be made.
        static PIPE: Option<(OwnedFd, OwnedFd)> = make_pipe();
    }

    fn make_pipe() -> Option<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per call; the default size still works if this fails.
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        Some((r, w))
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        // SAFETY: plain syscall on fds that stay open for the duration of the call.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn socket_to_socket(
        src: &TcpStream,
        dst: &TcpStream,
        max: usize,
    ) -> Option<io::Result<Spliced>> {
        PIPE.with(|pipe| {
            let (r, w) = pipe.as_ref()?;
            let read = src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), w.as_raw_fd(), max)
            });
            let n = match read {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            let mut written = 0;
            let mut write_error = None;
            while written < n {
                match dst.try_io(Interest::WRITABLE, || {
                    splice(r.as_raw_fd(), dst.as_raw_fd(), n - written)
                }) {
                    Ok(0) => break,
                    Ok(m) => written += m,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        write_error = Some(e);
                        break;
                    }
                }
            }
            let rest = (written < n).then(|| drain(r.as_raw_fd(), n - written));
            Some(Ok(Spliced {
                read: n,
                written,
                rest,
                write_error,
            }))
        })
    }

    /// Read exactly `len` bytes that are sitting in the pipe, leaving it empty.
    fn drain(fd: RawFd, len: usize) -> Bytes {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            // SAFETY: reading into the unfilled tail of a buffer we own.
            let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), len - got) };
            match n {
                n if n > 0 => got += n as usize,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                // The pipe holds exactly what we put in; anything else is a kernel bug.
                _ => panic!("pipe lost {} spliced bytes", len - got),
            }
        }
        Bytes::from(buf)
    }
}
