//! The daemon's counters, reported on USR1 and at exit (stderr in the foreground, syslog
//! otherwise). The original counted nothing, so a loss was invisible (spec §6).

use std::fmt;

use crate::matcher::MatchStats;

/// Counts since startup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received.
    pub received: u64,
    /// Valid pen records stored.
    pub records: u64,
    /// Datagrams starting with `+` that are not valid records (skipped).
    pub bad_records: u64,
    /// Web lines received.
    pub lines: u64,
    /// Lines written with their real client.
    pub matched: u64,
    /// Lines written unchanged (no record, no request field, or no host field).
    pub unmatched: u64,
    /// Lines waiting for a late record right now (not yet matched or unmatched).
    pub waiting: u64,
    /// Empty datagrams (skipped).
    pub empty: u64,
    /// Datagrams from a source not allowed by `--pen-from`/`--web-from` (skipped).
    pub refused: u64,
    /// Datagrams the kernel dropped (receive buffer full), from SO_MEMINFO.
    pub dropped: u64,
    /// Lines lost to output write errors.
    pub write_errors: u64,
    /// From the matcher.
    pub matcher: MatchStats,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} datagrams: {} records ({} bad), {} lines ({} matched, {} unmatched, \
             {} waiting), {} evicted, {} expired, {} refused, {} empty, {} dropped, \
             {} write errors",
            self.received,
            self.records,
            self.bad_records,
            self.lines,
            self.matched,
            self.unmatched,
            self.waiting,
            self.matcher.evicted,
            self.matcher.expired,
            self.refused,
            self.empty,
            self.dropped,
            self.write_errors,
        )
    }
}
