//! Files replaced whole: pen's `write` and its web stats page.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically: writes a temporary file in the same directory,
/// then renames it over `path`. The temporary file is removed if anything fails. The new
/// file gets default permissions (the original's `fopen("w")` kept the old file's).
/// Nothing is ever opened at `path` itself, so a symbolic link there is replaced, not
/// followed.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (tmp, mut file) = create_temp(path)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    match written.and_then(|()| fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Creates a new temporary file next to `path`: `DIR/.NAME.PID.tmp`, or if that is taken
/// `DIR/.NAME.PID.N.tmp` with the first N that is free. It is created exclusively
/// (`O_EXCL`), so nothing already at that name is opened: not a symlink planted in a
/// shared directory such as /tmp (which the old `File::create` followed, truncating its
/// target), not a FIFO (which would have blocked), not a file left by a crash.
fn create_temp(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a file name", path.display()),
        )
    })?;
    for n in 0..100 {
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(match n {
            0 => format!(".{}.tmp", std::process::id()),
            n => format!(".{}.{n}.tmp", std::process::id()),
        });
        let tmp = path.with_file_name(tmp);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temporary name next to '{}'", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_lies_at_the_temporary_name_is_never_opened() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("pen-stats-tmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, victim) = (dir.join("pen.cfg"), dir.join("victim"));
        std::fs::write(&victim, "precious").unwrap();
        // Someone who can write to the directory plants a symlink at the first name, and
        // a FIFO at the second.
        let pid = std::process::id();
        let tmp = |n: u32| match n {
            0 => dir.join(format!(".pen.cfg.{pid}.tmp")),
            n => dir.join(format!(".pen.cfg.{pid}.{n}.tmp")),
        };
        symlink(&victim, tmp(0)).unwrap();
        let c_path = std::ffi::CString::new(tmp(1).to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);

        replace_file(&path, b"timeout 5\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "timeout 5\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // The planted names are left as they were, and no other file is left behind.
        assert!(std::fs::symlink_metadata(tmp(0)).unwrap().is_symlink());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_that_is_no_file_name_is_an_error() {
        assert!(replace_file(Path::new("/"), b"x").is_err());
        let missing = std::env::temp_dir().join("pen-no-such-dir/x");
        assert!(replace_file(&missing, b"x").is_err());
    }
}
