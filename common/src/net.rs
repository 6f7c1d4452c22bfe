//! Socket setup with socket2: one function per socket kind, one error variant per syscall
//! step, so a failure says exactly which step failed on which address.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// Where a socket is bound: an internet address or a Unix-socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A failed socket step: `can't bind 127.0.0.1:80: Address already in use`.
#[derive(Debug)]
pub struct NetError {
    pub step: &'static str,
    pub endpoint: String,
    pub source: io::Error,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "can't {} {}: {}", self.step, self.endpoint, self.source)
    }
}

impl std::error::Error for NetError {}

fn step<T>(r: io::Result<T>, step: &'static str, ep: &dyn fmt::Display) -> Result<T, NetError> {
    r.map_err(|source| NetError {
        step,
        endpoint: ep.to_string(),
        source,
    })
}

/// A non-blocking stream listener with the original's options (`SO_REUSEADDR`,
/// `SO_KEEPALIVE`, optional `TCP_NODELAY`), but without `SO_REUSEPORT`: a second process
/// on the same port is an error, not a silent split (pen.md §13.2 #28). `[::]` is
/// dual-stack. A Unix path replaces an existing socket file, never another kind of file.
pub fn stream_listener(ep: &Endpoint, backlog: i32, nodelay: bool) -> Result<Socket, NetError> {
    let sock = match ep {
        Endpoint::Inet(addr) => {
            let s = step(
                Socket::new(Domain::for_address(*addr), Type::STREAM, None),
                "create",
                ep,
            )?;
            step(s.set_reuse_address(true), "set SO_REUSEADDR on", ep)?;
            step(s.set_keepalive(true), "set SO_KEEPALIVE on", ep)?;
            if nodelay {
                step(s.set_tcp_nodelay(true), "set TCP_NODELAY on", ep)?;
            }
            if addr.is_ipv6() {
                step(s.set_only_v6(false), "set IPV6_V6ONLY on", ep)?;
            }
            step(s.bind(&SockAddr::from(*addr)), "bind", ep)?;
            s
        }
        Endpoint::Unix(path) => {
            let s = step(Socket::new(Domain::UNIX, Type::STREAM, None), "create", ep)?;
            step(remove_stale_socket(path), "replace", ep)?;
            step(SockAddr::unix(path).and_then(|a| s.bind(&a)), "bind", ep)?;
            s
        }
    };
    step(sock.listen(backlog), "listen on", ep)?;
    step(sock.set_nonblocking(true), "set O_NONBLOCK on", ep)?;
    Ok(sock)
}

/// A UDP socket bound to `addr`, with a receive buffer of at least `rcvbuf` bytes if given
/// (the kernel may cap it; `SO_RCVBUFFORCE` is tried first when running privileged).
pub fn udp_socket(addr: SocketAddr, rcvbuf: Option<usize>) -> Result<Socket, NetError> {
    let ep = Endpoint::Inet(addr);
    let s = step(
        Socket::new(Domain::for_address(addr), Type::DGRAM, None),
        "create",
        &ep,
    )?;
    if addr.is_ipv6() {
        step(s.set_only_v6(false), "set IPV6_V6ONLY on", &ep)?;
    }
    if let Some(size) = rcvbuf {
        if s.set_recv_buffer_size_force(size).is_err() {
            step(s.set_recv_buffer_size(size), "set SO_RCVBUF on", &ep)?;
        }
    }
    step(s.bind(&SockAddr::from(addr)), "bind", &ep)?;
    Ok(s)
}

/// Removes `path` if it is a socket left behind by an earlier run.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Trait extension: `SO_RCVBUFFORCE` (Linux), which ignores `rmem_max` for root.
trait RecvBufferForce {
    fn set_recv_buffer_size_force(&self, size: usize) -> io::Result<()>;
}

impl RecvBufferForce for Socket {
    fn set_recv_buffer_size_force(&self, size: usize) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: valid fd and a pointer to a c_int of the stated length.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
