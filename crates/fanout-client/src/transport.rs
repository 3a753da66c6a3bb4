//! The client's TCP transport: a plain stream, or one read with the kernel's receive
//! timestamps.
//!
//! A load generator multiplexes thousands of clients on a few cores, so the moment it gets
//! round to parsing a frame can be long after the bytes arrived: its own queueing, not the
//! server's. With `SO_TIMESTAMPNS` every `recvmsg` also returns when the kernel received the
//! newest bytes it hands over (on loopback: when the server sent them), which the reader passes
//! on with each event so a receiver can take its own delay out of a latency.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The kernel receive time of the newest bytes a connection read, shared between the
/// transport (which writes it on every read) and the connection's reader task.
#[derive(Clone, Default)]
pub(crate) struct RxStamp(Arc<AtomicU64>);

impl RxStamp {
    /// The receive time of the newest read; `None` before the first read or after an
    /// unstamped one.
    pub(crate) fn get(&self) -> Option<SystemTime> {
        // Written and read on the reader task: the reader reads it right after the read that
        // produced the frame, so relaxed ordering sees that read's value.
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(UNIX_EPOCH + Duration::from_nanos(ns)),
        }
    }
}

/// A websocket's TCP stream; `stamp` is set when reads take kernel receive timestamps.
///
/// The kernel turns receive stamping on (a static key) in deferred work when the first socket
/// asks for it, so bytes arriving in the first moments after that may come unstamped: those
/// reads clear the stamp, and their frames are handed over without one. The load generator
/// connects its clients seconds before it measures, and its report counts the stamped
/// deliveries (`socket_latency_ms.count`).
pub(crate) struct Transport {
    stream: TcpStream,
    stamp: Option<RxStamp>,
}

impl Transport {
    /// A stream read with plain `recv`.
    pub(crate) fn plain(stream: TcpStream) -> Self {
        Transport {
            stream,
            stamp: None,
        }
    }

    /// A stream read with `recvmsg` and `SO_TIMESTAMPNS`; the stamp of each read goes to its
    /// [`RxStamp`] (see [`Transport::stamp`]).
    pub(crate) fn stamped(stream: TcpStream) -> io::Result<Self> {
        enable_rx_timestamps(stream.as_raw_fd())?;
        Ok(Transport {
            stream,
            stamp: Some(RxStamp::default()),
        })
    }

    /// A handle on the receive stamp of the reads, for the reader task; `None` for a plain
    /// stream.
    pub(crate) fn stamp(&self) -> Option<RxStamp> {
        self.stamp.clone()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(stamp) = &this.stamp else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let fd = this.stream.as_raw_fd();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            // SAFETY: `recv_stamped` only writes into the unfilled part and returns how many
            // bytes it initialised; only those are marked initialised below.
            let unfilled = unsafe { buf.unfilled_mut() };
            match this
                .stream
                .try_io(Interest::READABLE, || recv_stamped(fd, unfilled))
            {
                Ok((n, ns)) => {
                    // SAFETY: the kernel wrote `n` bytes at the start of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    // An unstamped read clears the stamp: keeping an older one would make the
                    // frame look received earlier than it was.
                    stamp.0.store(ns.unwrap_or(0), Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                // `try_io` cleared the readiness: wait for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(target_os = "linux")]
fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn enable_rx_timestamps(_fd: RawFd) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "kernel receive timestamps need Linux (SO_TIMESTAMPNS)",
    ))
}

/// One `recvmsg` into `buf`: the byte count, and the kernel receive time (ns since the Unix
/// epoch) of the newest bytes read, when the kernel attached one.
#[cfg(target_os = "linux")]
fn recv_stamped(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one SCM_TIMESTAMPNS (16 + 16 bytes) and more; u64 for cmsghdr's alignment.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `msg` points at a live iovec over `buf` and a live control buffer.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen`, which the kernel set.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = u64::try_from(ts.tv_sec)
                    .ok()
                    .zip(u64::try_from(ts.tv_nsec).ok())
                    .map(|(s, ns)| s.saturating_mul(1_000_000_000).saturating_add(ns));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

#[cfg(not(target_os = "linux"))]
fn recv_stamped(_fd: RawFd, _buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<u64>)> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Both ends of a real loopback connection: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn reads_carry_the_kernel_receive_time() {
        let (client, mut server) = pair().await;
        let mut stamped = Transport::stamped(client).unwrap();
        let stamp = stamped.stamp().expect("a stamped transport has a stamp");
        assert!(stamp.get().is_none(), "no read yet");
        // The kernel turns receive stamping on in deferred work when the first socket asks:
        // bytes that arrive in that moment come unstamped.
        let mut buf = [0u8; 16];
        for _ in 0..100 {
            server.write_all(b"w").await.unwrap();
            assert_eq!(stamped.read(&mut buf).await.unwrap(), 1);
            if stamp.get().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stamp.get().is_some(), "stamping never came on");

        let before = SystemTime::now();
        server.write_all(b"hello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = stamped.read(&mut buf).await.unwrap();
        let after = SystemTime::now();
        assert_eq!(&buf[..n], b"hello");
        let at = stamp.get().expect("the read was stamped");
        assert!(
            before <= at && at <= after,
            "{before:?} <= {at:?} <= {after:?}"
        );
        // Received when written, not when read 30 ms later.
        assert!(after.duration_since(at).unwrap() >= Duration::from_millis(25));

        // Writes go through unchanged; end of stream reads as 0 bytes.
        stamped.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        server.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(server);
        assert_eq!(stamped.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn plain_transport_reads_without_stamps() {
        let (client, mut server) = pair().await;
        let mut plain = Transport::plain(client);
        server.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(plain.read(&mut buf).await.unwrap(), 1);
        assert!(plain.stamp().is_none());
    }
}
