//! What applying commands would wait for, gathered ahead of time off the event loop: the
//! config files that `include` (and a HUP reload) read, and the host names that the
//! commands, theirs included, look up. The lookup worker ([`crate::lookup`]) fills a
//! [`Preload`]; the loop then applies the commands inside [`with_files`] (and
//! [`common::addr::with_answers`]), where [`read_file`](super::file::read_file) takes the
//! files from memory instead of the disk. So a config file on a slow disk, NFS or a FIFO
//! no longer stops all traffic while pen reads it (the original read it inside its loop).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::exec::MAX_INCLUDE_DEPTH;
use super::file::{read_from_disk, FileError};
use super::Command;

/// A config file's commands with their line numbers, or why it could not be read.
pub type Parsed = Result<Vec<(usize, Command)>, FileError>;

/// Config files by path (as given to `include` or `-F`; a path need not be UTF-8).
pub type Files = HashMap<PathBuf, Parsed>;

/// Files read and names found by walking commands as applying them would.
#[derive(Debug, Default)]
pub struct Preload {
    pub files: Files,
    names: Vec<String>,
    /// The shallowest depth each file's commands were walked at.
    walked: HashMap<PathBuf, usize>,
}

impl Preload {
    /// Walks `cmds` as applying them at include depth `depth` would: notes the names they
    /// look up and reads the files they include, theirs too, down to the depth limit.
    pub fn walk(&mut self, cmds: &[(usize, Command)], depth: usize) {
        for (_, cmd) in cmds {
            self.names.extend(cmd.names());
            if let Command::Include(file) = cmd {
                if depth < MAX_INCLUDE_DEPTH {
                    self.read(Path::new(file), depth + 1);
                }
            }
        }
    }

    /// Reads the file at `path` (once), then walks its commands at `depth` (again if that
    /// is shallower than before, as its includes may then reach further).
    pub fn read(&mut self, path: &Path, depth: usize) {
        if self.walked.get(path).is_some_and(|&d| d <= depth) {
            return;
        }
        self.walked.insert(path.to_path_buf(), depth);
        let parsed = self
            .files
            .entry(path.to_path_buf())
            .or_insert_with(|| read_from_disk(path));
        if let Ok(cmds) = parsed {
            let cmds = cmds.clone();
            self.walk(&cmds, depth);
        }
    }

    /// The names found, each once.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        names.sort();
        names.dedup();
        names
    }
}

thread_local! {
    static FILES: RefCell<Files> = RefCell::new(HashMap::new());
}

/// Runs `f` with `files` standing in for reading those files in this thread.
pub fn with_files<T>(files: Files, f: impl FnOnce() -> T) -> T {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            FILES.with(|a| a.borrow_mut().clear());
        }
    }
    FILES.with(|a| *a.borrow_mut() = files);
    let _clear = Clear;
    f()
}

/// The stand-in for the file at `path`, if [`with_files`] gave one.
pub(super) fn stand_in(path: &Path) -> Option<Parsed> {
    FILES.with(|a| a.borrow().get(path).cloned())
}

#[cfg(test)]
mod tests {
    use super::super::file::read_file;
    use super::super::parse_line;
    use super::*;

    fn cmds(lines: &[&str]) -> Vec<(usize, Command)> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, parse_line(l).unwrap()))
            .collect()
    }

    #[test]
    fn includes_are_read_ahead_and_their_names_found() {
        let dir = std::env::temp_dir().join(format!("pen-preload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (outer, inner, looped) = (
            dir.join("outer.cfg"),
            dir.join("inner.cfg"),
            dir.join("loop.cfg"),
        );
        std::fs::write(
            &outer,
            format!(
                "server 1 address web1.example\ninclude {}\ntimeout 5\n",
                inner.display()
            ),
        )
        .unwrap();
        std::fs::write(&inner, "log logs.example:514\nsource 10.0.0.1\n").unwrap();
        std::fs::write(&looped, format!("include {}\n", looped.display())).unwrap();

        let mut pre = Preload::default();
        pre.walk(
            &cmds(&[
                "source gw.example",
                &format!("include {}", outer.display()),
                &format!("include {}", looped.display()),
                &format!("include {}", dir.join("missing.cfg").display()),
            ]),
            0,
        );
        assert_eq!(pre.names(), ["gw.example", "logs.example", "web1.example"]);
        // A file that includes itself is read once.
        assert_eq!(pre.files.len(), 4);
        assert!(pre.files[&dir.join("missing.cfg")]
            .as_ref()
            .is_err_and(FileError::is_open_error));

        // The loop's reads come from memory: the files are gone from the disk by now.
        std::fs::remove_dir_all(&dir).unwrap();
        let files = pre.files;
        with_files(files, || {
            assert_eq!(
                read_file(&inner).unwrap(),
                cmds(&["log logs.example:514", "source 10.0.0.1"])
            );
            let e = read_file(&dir.join("missing.cfg")).unwrap_err();
            assert!(e
                .to_string()
                .contains("missing.cfg: can't read config file: "));
        });
        // Only while they last.
        assert!(read_file(&inner).is_err_and(|e| e.is_open_error()));
    }

    #[test]
    fn a_reload_file_is_walked_from_depth_zero() {
        let dir = std::env::temp_dir().join(format!("pen-preload-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A chain of includes one longer than the limit: the last file is not read, as
        // applying the chain would refuse it.
        let file = |i: usize| dir.join(format!("{i}.cfg"));
        for i in 0..=MAX_INCLUDE_DEPTH + 1 {
            std::fs::write(file(i), format!("include {}\n", file(i + 1).display())).unwrap();
        }
        let mut pre = Preload::default();
        pre.read(&file(0), 0);
        assert_eq!(pre.files.len(), MAX_INCLUDE_DEPTH + 1);
        assert!(!pre.files.contains_key(&file(MAX_INCLUDE_DEPTH + 1)));
        // Reached again from nearer the top, the chain is followed further (to a file
        // that does not exist).
        pre.read(&file(2), 0);
        assert_eq!(pre.files.len(), MAX_INCLUDE_DEPTH + 3);

        // A -F path need not be UTF-8: it is read, and found again, under its own bytes.
        use std::os::unix::ffi::OsStrExt;
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"pen-\xff.cfg"));
        std::fs::write(&odd, "timeout 5\n").unwrap();
        let mut pre = Preload::default();
        pre.read(&odd, 0);
        std::fs::remove_file(&odd).unwrap();
        with_files(pre.files, || {
            assert_eq!(read_file(&odd).unwrap(), cmds(&["timeout 5"]));
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
