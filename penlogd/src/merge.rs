//! The offline merge (`--merge`, what the original `mergelogs` did, spec §4): pen's local
//! log (§1.3) plus one access log per server, each in time order, become one access log
//! in time order whose lines carry the real client.
//!
//! Fixed against the original: times are read with their zone (it was right only with
//! TZ=UTC) and lines are written unchanged apart from the host field (it rewrote every
//! time as `+0000`); the jitter is a real acceptance window; each pen line is used at most
//! once, oldest first, so simultaneous identical requests get different clients; lines
//! that match nothing, or do not parse, are written unchanged instead of dropped; lines
//! are never split at 1024 bytes; IPv6 servers are written `[ADDR]:LOGFILE`; and `.gz`
//! inputs are read transparently.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;

use common::logrec::{FileLine, FILE_REQUEST_MAX};

use crate::cli::MergeConfig;
use crate::matcher::Matcher;
use crate::webline::{has_escapes, unescape, WebLine};
use crate::Error;

/// Counts of one merge, printed with `-d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub pen_lines: u64,
    pub pen_bad: u64,
    pub lines: u64,
    pub matched: u64,
    pub unmatched: u64,
    /// Pen lines already older than the window when the web logs got to their time.
    pub pen_stale: u64,
    /// The most pen lines held at once (a window's worth, whatever the log's length).
    pub pen_held_max: u64,
}

/// Runs the merge described by `cfg`, writing to `-l FILE` or stdout.
pub fn run(cfg: &MergeConfig) -> Result<(), Error> {
    common::diag::set_level(u32::from(cfg.debug));
    let pen = open(&cfg.penlog)?;
    let mut sources = Vec::new();
    for (server, path) in &cfg.servers {
        sources.push(Source::new(server, path, open(path)?));
    }
    let stats = match &cfg.out {
        Some(p) => {
            refuse_input_as_output(cfg, p)?;
            let f = File::create(p).map_err(|e| Error::Open(p.clone(), e))?;
            merge(cfg, pen, sources, BufWriter::new(f))?
        }
        None => merge(cfg, pen, sources, BufWriter::new(io::stdout().lock()))?,
    };
    common::debug!(
        1,
        "merged {} lines ({} matched, {} unmatched) with {} pen lines ({} unparsed, \
         {} older than every web line's window, at most {} held)",
        stats.lines,
        stats.matched,
        stats.unmatched,
        stats.pen_lines,
        stats.pen_bad,
        stats.pen_stale,
        stats.pen_held_max
    );
    Ok(())
}

/// `-l OUT` naming an input (by any path: same device and inode) would truncate it before
/// it is read.
fn refuse_input_as_output(cfg: &MergeConfig, out: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let Ok(o) = std::fs::metadata(out) else {
        return Ok(()); // not there yet: not an input
    };
    let inputs = std::iter::once(&cfg.penlog).chain(cfg.servers.iter().map(|(_, p)| p));
    for input in inputs {
        if let Ok(i) = std::fs::metadata(input) {
            if (i.dev(), i.ino()) == (o.dev(), o.ino()) {
                return Err(Error::Usage(format!(
                    "output '{}' is the input '{}'; refusing to overwrite it",
                    out.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// Opens a file, decompressing it when it starts with the gzip magic.
fn open(path: &Path) -> Result<Box<dyn BufRead>, Error> {
    let err = |e| Error::Open(path.to_path_buf(), e);
    let mut f = BufReader::new(File::open(path).map_err(err)?);
    let gz = f.fill_buf().map_err(err)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(f)))
    } else {
        Box::new(f)
    })
}

/// One server's access log with its current line.
struct Source {
    path: std::path::PathBuf,
    key: Vec<u8>,
    reader: Box<dyn BufRead>,
    line: Vec<u8>,
    /// The current line's time (epoch seconds); a line without one inherits the previous.
    time: i64,
    done: bool,
}

impl Source {
    fn new(server: &str, path: &Path, reader: Box<dyn BufRead>) -> Source {
        Source {
            path: path.to_path_buf(),
            key: server_key(server),
            reader,
            line: Vec::new(),
            time: i64::MIN,
            done: false,
        }
    }

    /// Reads the next line; false at EOF.
    fn advance(&mut self) -> Result<bool, Error> {
        self.line.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.line)
            .map_err(|e| Error::Read(self.path.clone(), e))?;
        if n == 0 {
            self.done = true;
            return Ok(false);
        }
        while self.line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
            self.line.pop();
        }
        if let Some(t) = clf_time(&self.line) {
            self.time = t;
        }
        Ok(true)
    }
}

/// The merge proper, over any readers and writer.
fn merge(
    cfg: &MergeConfig,
    mut pen: Box<dyn BufRead>,
    mut sources: Vec<Source>,
    mut out: impl Write,
) -> Result<MergeStats, Error> {
    // Saturating throughout: the command line caps --jitter, but a pen line can carry any
    // epoch, and a wrapped time would match nothing (release) or panic (debug).
    let jitter = i64::try_from(cfg.jitter).unwrap_or(i64::MAX);
    let mut matcher: Matcher<Rc<str>> = Matcher::new(
        usize::MAX,
        Some(jitter.saturating_mul(1000)),
        FILE_REQUEST_MAX,
    );
    let mut stats = MergeStats::default();
    let mut pen_line = Vec::new();
    // The next pen line, read ahead.
    let mut next_pen: Option<PenEntry> = None;
    let mut pen_done = false;
    let mut key = Vec::new();
    let mut lost = Vec::new();
    for s in &mut sources {
        s.advance()?;
    }
    // The source with the oldest current line; ties go to the earlier argument.
    while let Some(idx) = (0..sources.len())
        .filter(|&i| !sources[i].done)
        .min_by_key(|&i| sources[i].time)
    {
        let t = sources[idx].time;
        // Only a window's worth of pen lines is held: those older than t - jitter can
        // match nothing any more (the matcher would refuse them), so they are dropped
        // here rather than piled up, and each pass expires what fell out of the window.
        // Without this a pen log starting hours before the web logs was read whole.
        matcher.expire(t.saturating_mul(1000));
        // Read pen lines up to t + jitter into the matcher.
        loop {
            if next_pen.is_none() && !pen_done {
                next_pen = read_pen(&mut pen, &mut pen_line, cfg, &mut stats)?;
                pen_done = next_pen.is_none();
            }
            match &next_pen {
                Some(e) if e.time < t.saturating_sub(jitter) => {
                    stats.pen_stale += 1;
                    next_pen = None;
                }
                Some(e) if e.time <= t.saturating_add(jitter) => {
                    if let Some(e) = next_pen.take() {
                        matcher.record(
                            &e.server,
                            &e.request,
                            e.client,
                            e.time.saturating_mul(1000),
                        );
                    }
                }
                _ => break,
            }
        }
        stats.pen_held_max = stats.pen_held_max.max(matcher.len() as u64);
        let src = &sources[idx];
        let line = &src.line;
        stats.lines += 1;
        let w = WebLine::parse(line);
        let mut client = None;
        if let (Some(_), Some(req), Some(_)) = (w.host_end, w.request, clf_time(line)) {
            mangle(req, &mut lost, &mut key);
            client = matcher.take(&src.key, &key, t.saturating_mul(1000));
        }
        let res = match (client, w.host_end) {
            (Some(c), Some(end)) => {
                stats.matched += 1;
                out.write_all(c.as_bytes())
                    .and_then(|()| out.write_all(&line[end..]))
            }
            _ => {
                stats.unmatched += 1;
                out.write_all(line)
            }
        };
        res.and_then(|()| out.write_all(b"\n"))
            .map_err(Error::Write)?;
        sources[idx].advance()?;
    }
    out.flush().map_err(Error::Write)?;
    Ok(stats)
}

/// One line of pen's local log, ready for the matcher.
struct PenEntry {
    /// Epoch seconds minus the offset.
    time: i64,
    server: Vec<u8>,
    client: Rc<str>,
    request: Vec<u8>,
}

/// Reads the next parseable pen line.
fn read_pen(
    pen: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    cfg: &MergeConfig,
    stats: &mut MergeStats,
) -> Result<Option<PenEntry>, Error> {
    loop {
        buf.clear();
        if pen
            .read_until(b'\n', buf)
            .map_err(|e| Error::Read(cfg.penlog.clone(), e))?
            == 0
        {
            return Ok(None);
        }
        match FileLine::parse(buf) {
            Some(l) => {
                stats.pen_lines += 1;
                return Ok(Some(PenEntry {
                    time: l.epoch.saturating_sub(cfg.offset),
                    server: server_key(l.server),
                    client: Rc::from(l.client),
                    request: l.request.to_vec(),
                }));
            }
            None => {
                stats.pen_bad += 1;
                common::debug!(
                    1,
                    "skipping pen log line: {}",
                    String::from_utf8_lossy(buf).trim_end()
                );
            }
        }
    }
}

/// Turns Apache's logged request into what pen's local log holds: unescaped, the first
/// 100 bytes, bytes ≥ 0x80 as `.` (spec §1.3).
fn mangle(req: &[u8], scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
    let raw = if has_escapes(req) {
        unescape(req, scratch);
        &scratch[..]
    } else {
        req
    };
    out.clear();
    out.extend(
        raw.iter()
            .take(FILE_REQUEST_MAX)
            .map(|&b| if b >= 0x80 { b'.' } else { b }),
    );
}

/// A server's identity: its canonical address when it is one, else its text, so that
/// `::ffff:10.0.0.1` and `10.0.0.1`, or `::1` and `0:0::1`, are the same server.
fn server_key(server: &str) -> Vec<u8> {
    match server.parse::<IpAddr>().map(|a| a.to_canonical()) {
        Ok(IpAddr::V4(a)) => a.octets().to_vec(),
        Ok(IpAddr::V6(a)) => a.octets().to_vec(),
        Err(_) => server.as_bytes().to_vec(),
    }
}

/// The `[DD/Mon/YYYY:HH:MM:SS ±HHMM]` time of an access log line, as epoch seconds.
pub fn clf_time(line: &[u8]) -> Option<i64> {
    let open = line.iter().position(|&b| b == b'[')?;
    let len = line[open..].iter().position(|&b| b == b']')?;
    let text = std::str::from_utf8(&line[open + 1..open + len]).ok()?;
    chrono::DateTime::parse_from_str(text, "%d/%b/%Y:%H:%M:%S %z")
        .ok()
        .map(|t| t.timestamp())
}

/// Used by tests and by callers holding the whole input in memory.
pub fn merge_readers(
    cfg: &MergeConfig,
    pen: impl Read + 'static,
    logs: Vec<(String, Box<dyn Read>)>,
    out: impl Write,
) -> Result<MergeStats, Error> {
    let sources = logs
        .into_iter()
        .map(|(server, r)| {
            let path = std::path::PathBuf::from(&server);
            Source::new(&server, &path, Box::new(BufReader::new(r)))
        })
        .collect();
    merge(cfg, Box::new(BufReader::new(pen)), sources, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jitter: u64, offset: i64) -> MergeConfig {
        MergeConfig {
            debug: 0,
            penlog: "pen.log".into(),
            servers: vec![],
            out: None,
            jitter,
            offset,
        }
    }

    fn run_merge(cfg: &MergeConfig, pen: &str, logs: &[(&str, &str)]) -> (String, MergeStats) {
        let logs = logs
            .iter()
            .map(|(s, l)| {
                (
                    s.to_string(),
                    Box::new(io::Cursor::new(l.as_bytes().to_vec())) as Box<dyn Read>,
                )
            })
            .collect();
        let mut out = Vec::new();
        let st = merge_readers(
            cfg,
            io::Cursor::new(pen.as_bytes().to_vec()),
            logs,
            &mut out,
        )
        .unwrap();
        (String::from_utf8(out).unwrap(), st)
    }

    #[test]
    fn times_with_zones() {
        assert_eq!(
            clf_time(b"h - - [09/Sep/2001:03:46:40 +0200] \"GET /x HTTP/1.0\""),
            Some(1_000_000_000)
        );
        assert_eq!(
            clf_time(b"h - - [09/Sep/2001:01:46:40 +0000] x"),
            Some(1_000_000_000)
        );
        assert_eq!(
            clf_time(b"h - - [08/Sep/2001:20:46:40 -0500] x"),
            Some(1_000_000_000)
        );
        assert_eq!(
            clf_time(b"h - - [09/sep/2001:01:46:40 +0000] x"),
            Some(1_000_000_000)
        );
        assert_eq!(clf_time(b"h - - [junk] x"), None);
        assert_eq!(clf_time(b"no time"), None);
    }

    /// The spec §4 capture, with the original's defects fixed.
    #[test]
    fn spec_capture() {
        let pen = "10.0.0.1 1000000000 192.168.0.2 GET /x HTTP/1.0\n\
                   10.0.0.2 1000000100 192.168.0.2 GET /x HTTP/1.0\n\
                   10.0.0.9 1000000100 192.168.0.3 GET /x HTTP/1.0\n\
                   garbage\n\
                   10.0.0.3 1000000700 192.168.0.2 GET /x HTTP/1.0\n";
        let web2 = "192.168.0.2 - - [09/Sep/2001:03:46:45 +0200] \"GET /x HTTP/1.0\" 200 1\n\
                    192.168.0.2 - - [09/Sep/2001:01:48:20 +0000] \"GET /x HTTP/1.0\" 200 1\n\
                    192.168.0.2 - - [09/Sep/2001:01:58:20 +0000] \"GET /x HTTP/1.0\" 200 1 \"http://ref/\" \"UA/1.0\"\n\
                    192.168.0.2 - - [09/Sep/2001:02:30:00 +0000] \"GET /x HTTP/1.0\" 200 1\n\
                    192.168.0.2 - - [09/Sep/2001:02:30:00 +0000] \"GET /y HTTP/1.0\" 200 1\n";
        let web3 = "192.168.0.3 - - [09/Sep/2001:01:48:19 +0000] \"GET /x HTTP/1.0\" 200 1\n";
        let (out, st) = run_merge(
            &cfg(600, 0),
            pen,
            &[("192.168.0.2", web2), ("192.168.0.3", web3)],
        );
        let want = "10.0.0.1 - - [09/Sep/2001:03:46:45 +0200] \"GET /x HTTP/1.0\" 200 1\n\
                    10.0.0.9 - - [09/Sep/2001:01:48:19 +0000] \"GET /x HTTP/1.0\" 200 1\n\
                    10.0.0.2 - - [09/Sep/2001:01:48:20 +0000] \"GET /x HTTP/1.0\" 200 1\n\
                    10.0.0.3 - - [09/Sep/2001:01:58:20 +0000] \"GET /x HTTP/1.0\" 200 1 \"http://ref/\" \"UA/1.0\"\n\
                    192.168.0.2 - - [09/Sep/2001:02:30:00 +0000] \"GET /x HTTP/1.0\" 200 1\n\
                    192.168.0.2 - - [09/Sep/2001:02:30:00 +0000] \"GET /y HTTP/1.0\" 200 1\n";
        assert_eq!(out, want);
        assert_eq!(
            (st.matched, st.unmatched, st.pen_lines, st.pen_bad),
            (4, 2, 4, 1)
        );
    }

    #[test]
    fn simultaneous_identical_requests_get_different_clients() {
        let pen: String = (10..14)
            .map(|i| format!("127.0.0.{i} 1795236088 127.0.0.2 GET /a.html HTTP/1.1\n"))
            .collect();
        let web =
            "127.0.0.1 - - [21/Nov/2026:04:41:28 +0000] \"GET /a.html HTTP/1.1\" 200 2\n".repeat(4);
        let (out, _) = run_merge(&cfg(600, 0), &pen, &[("127.0.0.2", &web)]);
        let clients: Vec<&str> = out.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(
            clients,
            ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"]
        );
    }

    #[test]
    fn offset_window_and_mangled_requests() {
        // pen epochs an hour ahead; -t/--offset 3600 corrects them.
        let pen = "10.0.0.1 1000003600 ::1 GET /caf..\x01 HTTP/1.0\n";
        let web =
            "::1 - - [09/Sep/2001:01:46:40 +0000] \"GET /caf\\xc3\\xa9\\x01 HTTP/1.0\" 200 1\n";
        let (out, _) = run_merge(&cfg(5, 3600), pen, &[("0:0::1", web)]);
        assert!(out.starts_with("10.0.0.1 - - "), "{out}");
        let (out, _) = run_merge(&cfg(5, 0), pen, &[("::1", web)]);
        assert!(out.starts_with("::1 - - "), "outside the window: {out}");
        // A 150-byte request matches pen's 100-byte cut.
        let long = format!("GET /{} HTTP/1.0", "a".repeat(150));
        let pen = format!("10.0.0.4 1000000000 10.1.1.1 {}\n", &long[..100]);
        let web = format!("x - - [09/Sep/2001:01:46:40 +0000] \"{long}\" 200 1\n");
        let (out, _) = run_merge(&cfg(5, 0), &pen, &[("10.1.1.1", &web)]);
        assert!(out.starts_with("10.0.0.4 - - "), "{out}");
    }

    #[test]
    fn huge_jitter_and_epochs_do_not_overflow() {
        let pen = "10.0.0.1 -9223372036854775807 s GET /old HTTP/1.0\n\
                   10.0.0.2 1000000000 s GET / HTTP/1.0\n";
        let web = "a - - [09/Sep/2001:01:46:40 +0000] \"GET / HTTP/1.0\" 200 1\n";
        for jitter in [5, 100_000_000_000_000_000, u64::MAX] {
            let (out, st) = run_merge(&cfg(jitter, 0), pen, &[("s", web)]);
            assert!(out.starts_with("10.0.0.2 - - "), "jitter {jitter}: {out}");
            assert_eq!(st.matched, 1);
        }
        let (out, _) = run_merge(&cfg(5, i64::MIN), pen, &[("s", web)]);
        assert!(out.starts_with("a - - "), "offset saturates: {out}");
    }

    #[test]
    fn early_pen_lines_are_not_all_held() {
        // 100,000 pen lines three hours before the web logs start, then the real ones.
        let mut pen = String::new();
        for i in 0..100_000 {
            pen += &format!(
                "10.1.0.1 {} s GET /early/{i} HTTP/1.0\n",
                999_989_000 + i / 100
            );
        }
        for i in 0..50 {
            pen += &format!("10.2.0.{i} {} s GET /now HTTP/1.0\n", 1_000_000_000 + i);
        }
        let web: String = (0..50)
            .map(|i| {
                let t = chrono::DateTime::from_timestamp(1_000_000_000 + i, 0).unwrap();
                let t = t.format("%d/%b/%Y:%H:%M:%S +0000");
                format!("x - - [{t}] \"GET /now HTTP/1.0\" 200 1\n")
            })
            .collect();
        let (out, st) = run_merge(&cfg(5, 0), &pen, &[("s", &web)]);
        assert_eq!(st.matched, 50, "{out}");
        assert!(
            out.lines().last().unwrap().starts_with("10.2.0.49 "),
            "{out}"
        );
        assert_eq!(st.pen_stale, 100_000);
        assert!(st.pen_held_max <= 11, "held {}", st.pen_held_max);
    }

    #[test]
    fn unparsed_lines_kept_in_place() {
        let web = "a - - [09/Sep/2001:01:46:40 +0000] \"GET / HTTP/1.0\" 200 1\nnot a log line\n\
                   b - - [09/Sep/2001:01:46:41 +0000] \"GET / HTTP/1.0\" 200 1\n";
        let (out, st) = run_merge(&cfg(5, 0), "", &[("s", web)]);
        assert_eq!(out, web);
        assert_eq!(st.unmatched, 3);
    }
}
