//! The consolidated log: lines are appended to one buffer and written when the socket
//! queue is empty (at most [`FLUSH_DELAY`] later, at once with `-b`), when the buffer
//! fills, and at exit. The original was block-buffered, so its file stayed empty until
//! HUP and a crash lost the tail (spec §6); here a line waits at most a few milliseconds.
//!
//! HUP reopens the file (rotation by `mv`). With `-r SIZE` or `--daily` penlogd rotates
//! the file itself: rename to `FILE.YYYYMMDD-HHMMSS`, reopen, and gzip the renamed file
//! in a thread, so reception never waits for compression.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{Local, TimeZone};

/// The longest a line waits in the buffer when the socket queue is empty (without `-b`).
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// The buffer is written out when it holds this much.
const FLUSH_SIZE: usize = 64 << 10;

/// How often a failing rotation is reported.
const ROTATE_WARN_EVERY: Duration = Duration::from_secs(60);

/// Where lines go.
enum Target {
    Stdout(io::Stdout),
    File { path: PathBuf, file: File },
}

/// When to rotate the output file.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rotation {
    pub max_size: Option<u64>,
    pub daily: bool,
}

/// The buffered output.
pub struct Output {
    target: Target,
    buf: Vec<u8>,
    line_buffered: bool,
    /// When the oldest unwritten byte was appended.
    pending_since: Option<Instant>,
    /// Bytes in the current file.
    size: u64,
    rotation: Rotation,
    /// Epoch second of the next local midnight, for `--daily`.
    next_day: i64,
    compressors: Vec<JoinHandle<()>>,
    /// Failed rotations, and when one was last reported.
    rotate_errors: u64,
    rotate_warned: Option<Instant>,
    /// Write failures (disk full...): lines lost, counted and reported.
    pub write_errors: u64,
    /// Lines written (flushed or not).
    pub lines: u64,
}

impl Output {
    /// Writes to stdout.
    pub fn stdout(line_buffered: bool) -> Output {
        Output::new(
            Target::Stdout(io::stdout()),
            line_buffered,
            0,
            Rotation::default(),
        )
    }

    /// Appends to `path`, creating it.
    pub fn file(path: &Path, line_buffered: bool, rotation: Rotation) -> io::Result<Output> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let target = Target::File {
            path: path.to_path_buf(),
            file,
        };
        Ok(Output::new(target, line_buffered, size, rotation))
    }

    fn new(target: Target, line_buffered: bool, size: u64, rotation: Rotation) -> Output {
        Output {
            target,
            buf: Vec::with_capacity(FLUSH_SIZE * 2),
            line_buffered,
            pending_since: None,
            size,
            rotation,
            next_day: next_midnight(),
            compressors: Vec::new(),
            rotate_errors: 0,
            rotate_warned: None,
            write_errors: 0,
            lines: 0,
        }
    }

    /// Changes the path used by later reopens (after a chroot).
    pub fn set_path(&mut self, new: &Path) {
        if let Target::File { path, .. } = &mut self.target {
            *path = new.to_path_buf();
        }
    }

    /// The buffer to append one complete line to; call [`Output::appended`] after.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Notes that `lines` lines were appended at `now`; writes the buffer out when full.
    pub fn appended(&mut self, lines: usize, now: Instant) {
        if lines == 0 {
            return;
        }
        self.lines += lines as u64;
        if self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
        if self.buf.len() >= FLUSH_SIZE {
            self.flush();
        }
    }

    /// The socket queue is empty: writes the buffer if it is due, and returns how long
    /// the caller may sleep before calling again (`None`: until the next datagram).
    pub fn idle(&mut self, now: Instant) -> Option<Duration> {
        let since = self.pending_since?;
        let waited = now.saturating_duration_since(since);
        if self.line_buffered || waited >= FLUSH_DELAY {
            self.flush();
            return None;
        }
        Some(FLUSH_DELAY - waited)
    }

    /// Writes everything buffered, rotating first when due.
    pub fn flush(&mut self) {
        self.pending_since = None;
        if self.buf.is_empty() {
            return;
        }
        if self.rotation_due() {
            self.rotate();
        }
        let res = match &mut self.target {
            Target::Stdout(s) => s
                .lock()
                .write_all(&self.buf)
                .and_then(|()| s.lock().flush()),
            Target::File { file, .. } => file.write_all(&self.buf),
        };
        match res {
            Ok(()) => self.size += self.buf.len() as u64,
            Err(e) => {
                let lost = self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
                if self.write_errors == 0 {
                    common::diag!("can't write log: {e}; {lost} lines lost");
                }
                self.write_errors += lost;
            }
        }
        self.buf.clear();
    }

    /// HUP: flush, then close and reopen the file (stdout is left alone).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush();
        if let Target::File { path, file } = &mut self.target {
            *file = open_append(path)?;
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(())
    }

    fn rotation_due(&mut self) -> bool {
        if !matches!(self.target, Target::File { .. }) {
            return false;
        }
        let r = self.rotation;
        if r.max_size
            .is_some_and(|max| self.size > 0 && self.size + self.buf.len() as u64 > max)
        {
            return true;
        }
        if r.daily && Local::now().timestamp() >= self.next_day {
            self.next_day = next_midnight();
            return self.size > 0;
        }
        false
    }

    /// Renames the file aside, reopens it, and compresses the old one in a thread.
    fn rotate(&mut self) {
        self.rotate_with(open_append, Instant::now());
    }

    /// [`Output::rotate`] with the opener as a parameter, so that tests can make the
    /// reopen fail.
    fn rotate_with(&mut self, open: impl Fn(&Path) -> io::Result<File>, now: Instant) {
        let Target::File { path, file } = &mut self.target else {
            return;
        };
        let stamp = Local::now().format("%Y%m%d-%H%M%S").to_string();
        let mut aside = PathBuf::from(format!("{}.{stamp}", path.display()));
        let mut n = 1;
        while aside.exists() || gz_name(&aside).exists() {
            aside = PathBuf::from(format!("{}.{stamp}-{n}", path.display()));
            n += 1;
        }
        let failure = match std::fs::rename(&*path, &aside) {
            Err(e) => format!("can't rotate {}: {e}", path.display()),
            Ok(()) => match open(path) {
                Ok(f) => {
                    *file = f;
                    self.size = 0;
                    self.compressors.retain(|h| !h.is_finished());
                    self.compressors.push(std::thread::spawn(move || {
                        if let Err(e) = gzip(&aside) {
                            common::diag!("can't compress {}: {e}", aside.display());
                        }
                    }));
                    return;
                }
                // Put the file back and keep writing to it: the renamed file is about
                // to be compressed and removed, so lines written to it would be lost.
                Err(e) => match std::fs::rename(&aside, &*path) {
                    Ok(()) => format!("can't reopen {} after rotation: {e}", path.display()),
                    // Neither: keep writing to the renamed file, and leave it alone.
                    Err(e2) => format!(
                        "can't reopen {} after rotation ({e}) nor rename it back ({e2}); \
                         writing to {}",
                        path.display(),
                        aside.display()
                    ),
                },
            },
        };
        // A failure repeats at every flush while the size is over the limit: say so
        // once a minute, not hundreds of times a second.
        self.rotate_errors += 1;
        if self
            .rotate_warned
            .is_none_or(|t| now.saturating_duration_since(t) >= ROTATE_WARN_EVERY)
        {
            self.rotate_warned = Some(now);
            common::diag!("{failure} ({} failed rotations)", self.rotate_errors);
        }
    }

    /// Flushes and waits for compressions in progress (at exit).
    pub fn close(&mut self) {
        self.flush();
        for h in self.compressors.drain(..) {
            let _ = h.join();
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

fn gz_name(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.gz", p.display()))
}

/// Compresses `path` into `path.gz` and removes `path`. `path.gz` must not exist yet: it
/// is created exclusively, so nothing there is overwritten or followed (a link planted in
/// the log directory would otherwise have penlogd write wherever it points); on failure
/// `path` stays as it is.
fn gzip(path: &Path) -> io::Result<()> {
    let gz = gz_name(path);
    let mut input = File::open(path)?;
    let out = OpenOptions::new().write(true).create_new(true).open(&gz)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::remove_file(path)
}

/// The epoch second of the next local midnight.
fn next_midnight() -> i64 {
    let now = Local::now();
    let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive());
    let midnight = tomorrow.and_hms_opt(0, 0, 0).unwrap_or_default();
    match Local.from_local_datetime(&midnight).earliest() {
        Some(t) => t.timestamp(),
        None => now.timestamp() + 86400,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("penlogd-out-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn line(o: &mut Output, s: &str) {
        o.buf().extend_from_slice(s.as_bytes());
        o.appended(1, Instant::now());
    }

    #[test]
    fn gzip_never_writes_through_what_is_at_the_gz_name() {
        let d = dir("gzlink");
        let (aside, elsewhere) = (d.join("out.log.20261121-000000"), d.join("elsewhere"));
        std::fs::write(&aside, "a line\n").unwrap();
        // A dangling link, which `exists()` does not see.
        std::os::unix::fs::symlink(&elsewhere, gz_name(&aside)).unwrap();
        assert!(gzip(&aside).is_err());
        assert!(!elsewhere.exists(), "wrote through the link");
        assert_eq!(std::fs::read(&aside).unwrap(), b"a line\n", "kept");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn flush_policy() {
        let d = dir("flush");
        let path = d.join("out.log");
        let mut o = Output::file(&path, false, Rotation::default()).unwrap();
        let t0 = Instant::now();
        o.buf().extend_from_slice(b"a\n");
        o.appended(1, t0);
        assert_eq!(o.idle(t0), Some(FLUSH_DELAY), "waits a little");
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(o.idle(t0 + FLUSH_DELAY), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        let mut b = Output::file(&path, true, Rotation::default()).unwrap();
        line(&mut b, "b\n");
        assert_eq!(b.idle(Instant::now()), None, "-b writes at once");
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn rotates_daily_once_past_midnight() {
        let d = dir("daily");
        let path = d.join("out.log");
        let rot = Rotation {
            max_size: None,
            daily: true,
        };
        let mut o = Output::file(&path, true, rot).unwrap();
        line(&mut o, "yesterday\n");
        o.flush();
        assert!(!o.rotation_due(), "not before midnight");
        o.next_day = 0; // midnight has passed
        line(&mut o, "today\n");
        o.close();
        assert_eq!(std::fs::read(&path).unwrap(), b"today\n");
        assert!(o.next_day > 0, "the next midnight is scheduled");
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("out.log.") && n.ends_with(".gz")),
            "{names:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn failed_reopen_after_rotation_loses_nothing() {
        let d = dir("reopen-fails");
        let path = d.join("out.log");
        let mut o = Output::file(&path, true, Rotation::default()).unwrap();
        line(&mut o, "before\n");
        o.flush();
        let t0 = Instant::now();
        let refuse = |_: &Path| Err(io::Error::from(io::ErrorKind::PermissionDenied));
        o.rotate_with(refuse, t0);
        o.rotate_with(refuse, t0 + Duration::from_secs(1));
        assert_eq!(o.rotate_errors, 2);
        assert_eq!(o.rotate_warned, Some(t0), "reported once a minute");
        line(&mut o, "after\n");
        o.close();
        assert_eq!(std::fs::read(&path).unwrap(), b"before\nafter\n");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(
            names.len(),
            1,
            "nothing renamed aside or gzipped: {names:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn rotates_by_size_and_gzips() {
        let d = dir("rotate");
        let path = d.join("out.log");
        let mut o = Output::file(
            &path,
            true,
            Rotation {
                max_size: Some(10),
                daily: false,
            },
        )
        .unwrap();
        line(&mut o, "12345678\n");
        o.flush();
        line(&mut o, "second\n");
        o.flush();
        o.close();
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        let gz: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "gz"))
            .collect();
        assert_eq!(gz.len(), 1, "{gz:?}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&gz[0]).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "12345678\n");
        std::fs::remove_dir_all(d).unwrap();
    }
}
