//! Batched reception: one `recvmmsg(2)` fills up to [`SLOTS`] datagrams with their source
//! addresses, into buffers allocated once, so that receiving costs no allocation and one
//! system call per batch rather than per datagram (spec §3.5: one `recvfrom` each).
//!
//! Each slot holds a whole UDP datagram (64 KiB): the original's 1024-byte buffer
//! truncated longer ones silently and wrote one byte past its end at exactly 1024. A slot
//! is two pieces: the first [`HEAD`] bytes in one compact array, where every usual log
//! line fits, and the rest in a large overflow region that only long datagrams touch, so
//! a batch of small datagrams stays within a few pages (and TLB entries).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// Datagrams per `recvmmsg` call.
pub const SLOTS: usize = 128;

/// Room per datagram: the largest UDP payload.
const SLOT_SIZE: usize = 65536;

/// The compact first piece of each slot.
const HEAD: usize = 2048;

/// The overflow piece of each slot.
const TAIL: usize = SLOT_SIZE - HEAD;

/// Receive buffers and headers for one `recvmmsg` call.
pub struct Batch {
    heads: Vec<u8>,
    tails: Vec<u8>,
    /// A long datagram, reassembled from its two pieces.
    joined: Vec<u8>,
    iov: Vec<[libc::iovec; 2]>,
    names: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    /// Allocates the buffers and points the headers at them. The vectors are never
    /// resized afterwards, so the pointers stay valid when the `Batch` moves.
    pub fn new() -> Batch {
        let mut heads = vec![0u8; SLOTS * HEAD];
        let mut tails = vec![0u8; SLOTS * TAIL];
        // SAFETY: all-zero is a valid value for this plain C struct.
        let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { mem::zeroed() }; SLOTS];
        let mut iov: Vec<[libc::iovec; 2]> = (0..SLOTS)
            .map(|i| {
                [
                    libc::iovec {
                        // SAFETY: (i + 1) * HEAD <= heads.len().
                        iov_base: unsafe { heads.as_mut_ptr().add(i * HEAD) }.cast(),
                        iov_len: HEAD,
                    },
                    libc::iovec {
                        // SAFETY: (i + 1) * TAIL <= tails.len().
                        iov_base: unsafe { tails.as_mut_ptr().add(i * TAIL) }.cast(),
                        iov_len: TAIL,
                    },
                ]
            })
            .collect();
        let hdrs = (0..SLOTS)
            .map(|i| {
                // SAFETY: all-zero is a valid mmsghdr; the fields that matter are set here
                // and in `recv`.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_iov = iov[i].as_mut_ptr();
                h.msg_hdr.msg_iovlen = 2;
                h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                h
            })
            .collect();
        Batch {
            heads,
            tails,
            joined: Vec::new(),
            iov,
            names,
            hdrs,
        }
    }

    /// Receives what is queued, up to [`SLOTS`] datagrams, without waiting. Returns the
    /// count (0 is never returned: an empty queue is `WouldBlock`).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        debug_assert_eq!(self.iov.len(), SLOTS);
        for h in &mut self.hdrs {
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: the headers point into buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last batch: its bytes, its source IP (canonical: IPv4-mapped
    /// addresses read as IPv4), and whether the kernel had to cut it.
    pub fn get(&mut self, i: usize) -> (&[u8], Option<IpAddr>, bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(SLOT_SIZE);
        let cut = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let from = source(&self.names[i]);
        if len <= HEAD {
            return (&self.heads[i * HEAD..i * HEAD + len], from, cut);
        }
        self.joined.clear();
        self.joined
            .extend_from_slice(&self.heads[i * HEAD..(i + 1) * HEAD]);
        self.joined
            .extend_from_slice(&self.tails[i * TAIL..i * TAIL + len - HEAD]);
        (&self.joined, from, cut)
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

fn source(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)).to_canonical())
        }
        _ => None,
    }
}

/// The kernel's count of datagrams dropped on this socket (receive buffer full, bad
/// checksum), from `SO_MEMINFO`.
pub fn kernel_drops(fd: RawFd) -> Option<u64> {
    // SK_MEMINFO_VARS is 9 today; leave room for growth.
    let mut info = [0u32; 16];
    let mut len = mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info is a writable array of the declared length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_receives_with_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let long: Vec<u8> = (0..65000u32).map(|i| (i % 251) as u8).collect();
        let a = UdpSocket::bind("127.0.0.2:0").unwrap();
        let b = UdpSocket::bind("127.0.0.3:0").unwrap();
        a.send_to(b"one\n", to).unwrap();
        b.send_to(b"", to).unwrap();
        a.send_to(&long, to).unwrap();
        a.send_to(&long[..HEAD], to).unwrap();
        a.send_to(&long[..HEAD + 1], to).unwrap();
        let mut batch = Batch::new();
        let mut got = Vec::new();
        while got.len() < 5 {
            match batch.recv(rx.as_raw_fd()) {
                Ok(n) => (0..n).for_each(|i| {
                    let (d, from, cut) = batch.get(i);
                    got.push((d.to_vec(), from.unwrap().to_string(), cut));
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got[0], (b"one\n".to_vec(), "127.0.0.2".into(), false));
        assert_eq!(got[1], (Vec::new(), "127.0.0.3".into(), false));
        assert_eq!(got[2].0, long);
        assert_eq!(got[3].0, &long[..HEAD]);
        assert_eq!(got[4].0, &long[..HEAD + 1]);
        assert_eq!(kernel_drops(rx.as_raw_fd()), Some(0));
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
