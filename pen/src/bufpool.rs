//! Buffers for bytes a peer could not take yet. The loop reads into one buffer it owns and
//! writes straight through; only the unwritten rest of a read is kept, in a buffer taken
//! from this pool and given back once it drains, so an idle connection holds no buffer.

/// Initial capacity of a pending buffer (the original's chunk).
pub const CHUNK: usize = 32 * 1024;

/// Size of the loop's one read buffer, the most one read takes. Bigger reads cut the CPU
/// of bulk transfers and the wake-ups of both peers (lbbench's bulk phase: about 1.1 s/GiB
/// at the original's 32 KiB, 0.6 s/GiB at 256 KiB; at 1 MiB 0.49 s/GiB and 1.12-1.17
/// times the throughput of 256 KiB, paired over 20 rounds). A connection whose receiver
/// cannot take a whole read keeps the rest, at most this much per direction, until it
/// drains: small next to the socket buffers the kernel already holds for such a
/// connection (up to 4 MiB to send and 6 MiB received, by default).
pub const READ_CHUNK: usize = 1024 * 1024;

/// Bytes waiting to be written to one side, with a read offset.
#[derive(Debug)]
pub struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    /// The bytes still to write.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// True when everything was written.
    pub fn is_empty(&self) -> bool {
        self.start >= self.buf.len()
    }

    /// Number of bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// A free list of buffers, bounded so that a burst does not pin memory for ever. A
/// pending buffer is boxed so that a connection without one pays a single pointer.
#[derive(Debug, Default)]
pub struct BufPool {
    // Boxes, not bare buffers: `take` hands out the box itself, so reuse allocates nothing.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Pending>>,
    /// Capacity held in `free`, in bytes.
    held: usize,
}

/// Bytes of spare buffers kept at most (2 MiB): enough to absorb the churn of a busy loop,
/// small enough that a past burst does not show up as resident memory.
const KEEP_BYTES: usize = 2 << 20;

impl BufPool {
    /// A pending buffer holding a copy of `data`, sized for it (a bulk transfer's remnant
    /// can be up to a whole read), reusing a pooled one when it is big enough.
    pub fn take(&mut self, data: &[u8]) -> Box<Pending> {
        let mut p = match self.free.pop() {
            Some(p) => {
                self.held -= p.buf.capacity();
                p
            }
            None => Box::new(Pending {
                buf: Vec::with_capacity(data.len().max(CHUNK)),
                start: 0,
            }),
        };
        p.buf.clear();
        p.buf.extend_from_slice(data);
        p.start = 0;
        p
    }

    /// Returns a drained (or abandoned) buffer to the pool.
    pub fn give(&mut self, p: Box<Pending>) {
        let cap = p.buf.capacity();
        if cap <= READ_CHUNK && self.held + cap <= KEEP_BYTES {
            self.held += cap;
            self.free.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_and_stays_bounded() {
        let mut pool = BufPool::default();
        let big = vec![7u8; READ_CHUNK];
        let mut p = pool.take(&big);
        assert_eq!(p.bytes(), &big[..]);
        p.consume(READ_CHUNK - 3);
        assert_eq!((p.len(), p.is_empty()), (3, false));
        pool.give(p);
        let again = pool.take(b"abc");
        assert!(
            again.buf.capacity() >= READ_CHUNK,
            "the big buffer was reused"
        );
        assert_eq!(again.bytes(), b"abc");
        pool.give(again);
        for _ in 0..100 {
            let p = pool.take(&big);
            pool.give(p);
            let extra: Vec<_> = (0..20).map(|_| pool.take(&big)).collect();
            for p in extra {
                pool.give(p);
            }
        }
        assert!(pool.held <= KEEP_BYTES);
    }
}
