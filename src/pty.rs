//! Pseudo-terminals (Unix only): a pair whose slave stands in for a serial
//! port and whose master an emulated device talks through. The agent opens
//! the slave by its path, exactly as it opens `/dev/ttyACM0`, so the demo's
//! devices exercise the real port code, drivers and codecs.
//!
//! The master is non-blocking and driven by tokio's reactor ([`AsyncFd`]):
//! no thread blocks on it, so stopping the runtime never waits for a read.
//! The pair keeps its own slave descriptor open for its whole life. That
//! keeps the terminal's raw mode and buffered bytes while the agent opens
//! and closes the port, and keeps reads of the master from failing (EIO)
//! when nobody else has the slave open. Dropping the pair hangs it up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::Winsize;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pseudo-terminal pair in raw mode; reading and writing it talks to
/// whoever has the slave open.
pub struct Pty {
    master: AsyncFd<File>,
    /// Held, never used: see the module documentation.
    _slave: OwnedFd,
    slave_path: PathBuf,
}

impl Pty {
    /// Opens a pair. Must be called inside a tokio runtime (the master is
    /// registered with its reactor).
    pub fn open() -> io::Result<Pty> {
        let pair = nix::pty::openpty(None::<&Winsize>, None::<&Termios>)
            .map_err(|errno| describe("cannot open a pseudo-terminal", errno.into()))?;
        // Neither end may leak into a process started meanwhile (an
        // inherited master would keep the terminal alive after a drop).
        for descriptor in [&pair.master, &pair.slave] {
            fcntl(descriptor, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
                .map_err(|errno| describe("cannot set close-on-exec", errno.into()))?;
        }
        let slave_path = nix::unistd::ttyname(&pair.slave)
            .map_err(|errno| describe("cannot name the pseudo-terminal", errno.into()))?;
        // Raw before anyone else can open it: no echo of what the device
        // sends, no line editing, no CR/LF translation.
        let mut settings = termios::tcgetattr(&pair.slave)
            .map_err(|errno| describe("cannot read the terminal settings", errno.into()))?;
        termios::cfmakeraw(&mut settings);
        termios::tcsetattr(&pair.slave, SetArg::TCSANOW, &settings)
            .map_err(|errno| describe("cannot set raw mode", errno.into()))?;
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL)
            .map_err(|errno| describe("cannot read the master's flags", errno.into()))?;
        fcntl(
            &pair.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|errno| describe("cannot make the master non-blocking", errno.into()))?;
        // SAFETY: the `File` owns the descriptor and the `AsyncFd` owns the
        // `File`: the descriptor stays open, and the same, until the
        // `AsyncFd` is dropped, and `as_raw_fd` always returns it.
        let master = unsafe { AsyncFd::register(File::from(pair.master)) }?;
        Ok(Pty {
            master,
            _slave: pair.slave,
            slave_path,
        })
    }

    /// What the agent opens: `/dev/pts/4` on Linux.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.poll_read_ready(context))?;
            let unfilled = buffer.initialize_unfilled();
            match guard.try_io(|master| master.get_ref().read(unfilled)) {
                Ok(Ok(count)) => {
                    buffer.advance(count);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                // Not readable after all: readiness was cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.master.poll_write_ready(context))?;
            match guard.try_io(|master| master.get_ref().write(bytes)) {
                Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are in the terminal already; there is no buffer here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsFd for Pty {
    /// The master's descriptor.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.master.get_ref().as_fd()
    }
}

fn describe(what: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_the_pair_unchanged_both_ways() {
        let mut pty = Pty::open().expect("open a pseudo-terminal");
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.slave_path())
            .expect("open the slave by its path");
        // Raw mode: CR, LF and control bytes pass as they are, no echo.
        let frame = b"$K,202A0F31,1,17*55\r\n\x03\xa5";
        pty.write_all(frame).await.expect("write the master");
        let mut received = vec![0u8; frame.len()];
        slave.read_exact(&mut received).expect("read the slave");
        assert_eq!(received, frame);

        slave.write_all(b"$Q*51\r\n").expect("write the slave");
        let mut answer = vec![0u8; 7];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            pty.read_exact(&mut answer),
        )
        .await
        .expect("the master is readable within 5 s")
        .expect("read the master");
        assert_eq!(answer, b"$Q*51\r\n");
    }
}
