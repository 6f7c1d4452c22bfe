//! Config files (`-F`, `include`, HUP reloads; control.md §5.1): one command per line,
//! parsed with [`parse_line`] exactly as if it had come from the control socket, and
//! [`State::apply_reload`], which applies a file re-read on HUP.
//!
//! Blank, space-only and `#` comment lines are skipped; the rest are returned with their
//! line numbers, for the caller to execute. Unlike the original, which printed an
//! "ignoring" reply on stdout (`/dev/null` once daemonised) and carried on, the first bad
//! line stops the read with a `FILE:LINE: message` error (ripgrep's config.rs style), so a
//! typo in a config file is seen instead of half-applied. Whether a missing file is fatal
//! (the original only logged it) is the caller's choice: see [`FileError::is_open_error`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::{parse_line, Command, ParseError};
use crate::state::State;

impl State {
    /// Applies the `-F` file re-read on HUP: a file that did not parse was rejected whole
    /// before this (as `nginx -s reload` does); here its ACLs are applied afresh instead of
    /// appended again (the original grew every list on each HUP: control.md §5.3), each
    /// reply goes to stdout, and a command that fails is reported while the rest still
    /// applies.
    pub fn apply_reload(&mut self, path: &Path, cmds: Vec<(usize, Command)>) {
        for (_, cmd) in &cmds {
            if let Command::Acl(n, _) = cmd {
                self.acls.clear(*n);
            }
        }
        for (lineno, cmd) in cmds {
            match self.apply(cmd) {
                Ok(reply) => print!("{reply}"),
                Err(e) => common::diag!("{}:{lineno}: {e}", path.display()),
            }
        }
    }
}

/// Longest line accepted, not counting its `\n` or `\r\n` (the original read lines with
/// `fgets` into a 4096-byte buffer).
pub const MAX_LINE: usize = 4095;

/// A config file that could not be read or has a bad line.
#[derive(Debug)]
pub struct FileError {
    /// The file name as given.
    pub name: String,
    /// The 1-based line number, when the error is about a line.
    pub line: Option<usize>,
    /// What went wrong.
    pub kind: FileErrorKind,
}

/// What went wrong with a config file.
#[derive(Debug)]
pub enum FileErrorKind {
    /// The file could not be opened.
    Open(io::Error),
    /// Reading failed part-way.
    Read(io::Error),
    /// A line is longer than [`MAX_LINE`] bytes.
    TooLong,
    /// A line is not valid UTF-8.
    NotUtf8,
    /// A line is not a valid command.
    Parse(ParseError),
}

impl FileError {
    /// True when the file could not be opened at all (missing, unreadable, a directory…).
    pub fn is_open_error(&self) -> bool {
        matches!(self.kind, FileErrorKind::Open(_))
    }
}

/// A copy that says the same (`io::Error` is not `Clone`): for a file read ahead, whose
/// error may be reported more than once.
impl Clone for FileError {
    fn clone(&self) -> FileError {
        let io = |e: &io::Error| match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        };
        FileError {
            name: self.name.clone(),
            line: self.line,
            kind: match &self.kind {
                FileErrorKind::Open(e) => FileErrorKind::Open(io(e)),
                FileErrorKind::Read(e) => FileErrorKind::Read(io(e)),
                FileErrorKind::TooLong => FileErrorKind::TooLong,
                FileErrorKind::NotUtf8 => FileErrorKind::NotUtf8,
                FileErrorKind::Parse(e) => FileErrorKind::Parse(e.clone()),
            },
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.name, line)?,
            None => write!(f, "{}: ", self.name)?,
        }
        match &self.kind {
            FileErrorKind::Open(e) => write!(f, "can't read config file: {e}"),
            FileErrorKind::Read(e) => write!(f, "read error: {e}"),
            FileErrorKind::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            FileErrorKind::NotUtf8 => write!(f, "line is not valid UTF-8"),
            FileErrorKind::Parse(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            FileErrorKind::Open(e) | FileErrorKind::Read(e) => Some(e),
            FileErrorKind::Parse(e) => Some(e),
            FileErrorKind::TooLong | FileErrorKind::NotUtf8 => None,
        }
    }
}

/// Reads and parses the config file at `path`, from memory if it was read ahead
/// ([`super::preload::with_files`]).
pub fn read_file(path: &Path) -> Result<Vec<(usize, Command)>, FileError> {
    match super::preload::stand_in(path) {
        Some(parsed) => parsed,
        None => read_from_disk(path),
    }
}

/// Reads and parses the config file at `path` from the disk.
pub(super) fn read_from_disk(path: &Path) -> Result<Vec<(usize, Command)>, FileError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| FileError {
        name: name.clone(),
        line: None,
        kind: FileErrorKind::Open(e),
    })?;
    parse_reader(BufReader::new(file), &name)
}

/// Parses config text from `r`; `name` is used in error messages. Returns each command with
/// its 1-based line number; comments and blank lines are left out.
pub fn parse_reader(mut r: impl BufRead, name: &str) -> Result<Vec<(usize, Command)>, FileError> {
    let error = |line, kind| FileError {
        name: name.to_string(),
        line: Some(line),
        kind,
    };
    // Room for the longest line plus "\r\n": anything that fills it without a '\n' is too
    // long, and a huge line is never read into memory whole.
    let limit = (MAX_LINE + 2) as u64;
    let mut commands = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        line += 1;
        buf.clear();
        let n = (&mut r)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| error(line, FileErrorKind::Read(e)))?;
        if n == 0 {
            return Ok(commands);
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.len() > MAX_LINE {
            return Err(error(line, FileErrorKind::TooLong));
        }
        let text = std::str::from_utf8(text).map_err(|_| error(line, FileErrorKind::NotUtf8))?;
        match parse_line(text) {
            Ok(Command::Nothing) => {}
            Ok(command) => commands.push((line, command)),
            Err(e) => return Err(error(line, FileErrorKind::Parse(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::command::{Flag, IntSetting};

    fn parse(text: &[u8]) -> Result<Vec<(usize, Command)>, FileError> {
        parse_reader(Cursor::new(text), "pen.cfg")
    }

    #[test]
    fn commands_with_line_numbers() {
        let text =
            b"# Generated by pen\n\nblacklist 20\n   \nno hash\r\n  # indented comment\nmode";
        let got = parse(text).unwrap();
        assert_eq!(
            got,
            vec![
                (3, Command::Int(IntSetting::Blacklist, Some(20))),
                (5, Command::Flag(Flag::Hash, false)),
                (7, Command::Mode),
            ]
        );
    }

    #[test]
    fn empty_input() {
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b"\n\n# x\n").unwrap(), vec![]);
    }

    #[test]
    fn text_after_a_command_is_not_a_comment() {
        let got = parse(b"timeout 5 # five seconds\n").unwrap();
        assert_eq!(got, vec![(1, Command::Int(IntSetting::Timeout, Some(5)))]);
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let e = parse(b"mode\nblacklist abc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pen.cfg:2: blacklist: expected a number, got 'abc'"
        );
        assert_eq!(e.line, Some(2));
        assert!(!e.is_open_error());
        let e = parse(b"\tblacklist 5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pen.cfg:1: do_cmd: ignoring command starting with '\tblacklist'"
        );
    }

    #[test]
    fn long_lines() {
        let mut ok = b"#".to_vec();
        ok.resize(MAX_LINE, b'x');
        let mut text = ok.clone();
        text.extend_from_slice(b"\r\nmode\n");
        assert_eq!(parse(&text).unwrap(), vec![(2, Command::Mode)]);

        let mut long = b"mode\n#".to_vec();
        long.resize(5 + MAX_LINE + 1, b'x');
        long.extend_from_slice(b"\nmode\n");
        let e = parse(&long).unwrap_err();
        assert_eq!(e.to_string(), "pen.cfg:2: line longer than 4095 bytes");

        // Without a newline at all, and far longer than the limit.
        let e = parse(&vec![b'#'; 100_000]).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(matches!(e.kind, FileErrorKind::TooLong));
    }

    #[test]
    fn non_utf8_line() {
        let e = parse(b"mode\nlog /tmp/\xff\n").unwrap_err();
        assert_eq!(e.to_string(), "pen.cfg:2: line is not valid UTF-8");
    }

    #[test]
    fn missing_file() {
        let e = read_file(Path::new("/nonexistent/dir/pen.cfg")).unwrap_err();
        assert!(e.is_open_error());
        assert!(e
            .to_string()
            .starts_with("/nonexistent/dir/pen.cfg: can't read config file: "));
    }
}
