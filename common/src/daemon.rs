//! Process plumbing shared by pen and penlogd: daemonising with a readiness report, the
//! pidfile, and dropping privileges (chroot, groups, uid).
//!
//! The original forked before binding anything, so a daemon that failed to start still
//! exited 0 (pen.md §13.2 #6). Here the parent waits until the child reports that startup
//! succeeded, and otherwise prints the child's error and exits 1.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// Errors of the privilege and pidfile steps, each naming what failed.
#[derive(Debug)]
pub enum DaemonError {
    Fork(io::Error),
    UnknownUser(String),
    Chroot(PathBuf, io::Error),
    SetGroups(String, io::Error),
    SetGid(u32, io::Error),
    SetUid(u32, io::Error),
    Pidfile(PathBuf, io::Error),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Fork(e) => write!(f, "can't fork: {e}"),
            DaemonError::UnknownUser(u) => write!(f, "unknown user '{u}'"),
            DaemonError::Chroot(d, e) => write!(f, "can't chroot to '{}': {e}", d.display()),
            DaemonError::SetGroups(u, e) => write!(f, "can't set groups of '{u}': {e}"),
            DaemonError::SetGid(g, e) => write!(f, "can't setgid({g}): {e}"),
            DaemonError::SetUid(u, e) => write!(f, "can't setuid({u}): {e}"),
            DaemonError::Pidfile(p, e) => write!(f, "can't create pidfile '{}': {e}", p.display()),
        }
    }
}

impl std::error::Error for DaemonError {}

/// The child's end of the readiness pipe. Dropping it without [`Readiness::ready`] makes
/// the waiting parent exit 1.
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// A no-op handle for foreground runs.
    pub fn foreground() -> Readiness {
        Readiness { pipe: None }
    }

    /// Startup succeeded: release the parent (exit 0) and detach stdio to /dev/null.
    pub fn ready(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"\0");
            drop(pipe);
            detach_stdio();
        }
    }

    /// Startup failed: the parent prints `msg` on its stderr and exits 1. The child's
    /// stdio is detached too, so that its own report of the error (main prints it) does
    /// not reach the caller a second time.
    pub fn fail(mut self, msg: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(msg.as_bytes());
            drop(pipe);
            detach_stdio();
        }
    }
}

/// Forks into the background. The parent never returns: it waits for the child's
/// [`Readiness`] report and exits with 0 or 1. The child calls `setsid()` and returns.
pub fn daemonize(prog: &str) -> Result<Readiness, DaemonError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(DaemonError::Fork(io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned here.
    let (rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: the programs using this are single-threaded at this point.
    match unsafe { libc::fork() } {
        -1 => Err(DaemonError::Fork(io::Error::last_os_error())),
        0 => {
            drop(rd);
            // SAFETY: plain syscall; failure only means we already lead a session.
            unsafe { libc::setsid() };
            Ok(Readiness { pipe: Some(wr) })
        }
        _ => {
            drop(wr);
            wait_for_child(prog, rd)
        }
    }
}

fn wait_for_child(prog: &str, mut rd: File) -> ! {
    let mut report = Vec::new();
    let _ = rd.read_to_end(&mut report);
    if report.first() == Some(&0) {
        std::process::exit(0);
    }
    let msg = String::from_utf8_lossy(&report);
    if msg.is_empty() {
        eprintln!("{prog}: exited during startup");
    } else {
        eprintln!("{prog}: {msg}");
    }
    std::process::exit(1);
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// A pidfile holding the decimal PID with no newline (as the original), removed on drop.
pub struct Pidfile {
    path: PathBuf,
}

impl Pidfile {
    /// Writes the current PID to `path`. A symbolic link there is refused (`O_NOFOLLOW`),
    /// not followed: one planted in a shared directory would otherwise have the daemon
    /// truncate its target, as root when it runs without `-u` (the original's `fopen`
    /// did). A file that exists is rewritten in place, so a pidfile prepared for the `-u`
    /// user in a directory that user cannot write to still works.
    pub fn create(path: &Path) -> Result<Pidfile, DaemonError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e| DaemonError::Pidfile(path.to_path_buf(), e);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(err)?;
        write!(f, "{}", std::process::id()).map_err(err)?;
        Ok(Pidfile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A user looked up in the password database before any chroot hides it.
pub struct User {
    name: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl User {
    /// Looks up `name` (getpwnam_r).
    pub fn lookup(name: &str) -> Result<User, DaemonError> {
        let unknown = || DaemonError::UnknownUser(name.to_string());
        let cname = CString::new(name).map_err(|_| unknown())?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16384];
        // SAFETY: all pointers are valid for the call; buf outlives the use of pw's strings.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(unknown());
        }
        Ok(User {
            name: cname,
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// chroot (followed by `chdir("/")`, which the original forgot), then the user's groups,
/// gid and uid (the original kept root's supplementary groups: pen.md §13.2 #21).
pub fn drop_privileges(user: Option<&User>, root: Option<&Path>) -> Result<(), DaemonError> {
    if let Some(dir) = root {
        let err = |e| DaemonError::Chroot(dir.to_path_buf(), e);
        let c = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: c is a valid C string.
        if unsafe { libc::chroot(c.as_ptr()) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        std::env::set_current_dir("/").map_err(err)?;
    }
    if let Some(u) = user {
        let name = name_of(&u.name);
        // SAFETY: plain syscalls with valid arguments.
        if unsafe { libc::initgroups(u.name.as_ptr(), u.gid) } < 0 {
            return Err(DaemonError::SetGroups(name, io::Error::last_os_error()));
        }
        if unsafe { libc::setgid(u.gid) } < 0 {
            return Err(DaemonError::SetGid(u.gid, io::Error::last_os_error()));
        }
        if unsafe { libc::setuid(u.uid) } < 0 {
            return Err(DaemonError::SetUid(u.uid, io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn name_of(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

/// Raises the soft fd limit to the hard limit, so `-x` connections have descriptors.
pub fn raise_fd_limit() {
    raise_soft_limit(libc::RLIMIT_NOFILE);
}

/// Raises the soft core-file size limit to the hard one, so that an abort leaves a core
/// file when the administrator allows one (the original always raised it).
pub fn allow_core_dump() {
    raise_soft_limit(libc::RLIMIT_CORE);
}

/// The type of a resource number: glibc has its own, other libcs an int.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn raise_soft_limit(resource: Resource) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a rlimit.
    unsafe {
        if libc::getrlimit(resource, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(resource, &lim);
        }
    }
}

/// True when the real user id is root (the original refuses a control port then).
pub fn running_as_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfile_refuses_a_planted_link_instead_of_following_it() {
        let dir = std::env::temp_dir().join(format!("common-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, victim) = (dir.join("pen.pid"), dir.join("victim"));
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = Pidfile::create(&path).err().expect("a link is refused");
        assert!(e.to_string().starts_with("can't create pidfile '"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

        // A file that is there already is rewritten.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "12345678901234567890").unwrap();
        let pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        drop(pidfile);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
