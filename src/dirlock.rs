//! One process per data directory.
//!
//! Owns: `<data>/lock`, a file holding the pid of the process that holds an exclusive
//! `flock(2)` on it (as Prometheus's `lock` file). The server takes it before anything
//! else in the directory is read or written and keeps it until it exits. The kernel
//! releases a `flock` when its holder dies, however it dies, so a killed node never
//! blocks its own restart (ADR 0010). Calls only std and libc.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// The held lock; released when dropped (or when the process dies).
pub struct DirLock {
    _file: File,
}

/// Why the data directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; its pid when the lock file names one.
    InUse {
        dir: PathBuf,
        holder: Option<u32>,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::InUse { dir, holder } => {
                let lock = dir.join(LOCK_FILE);
                let holder = match holder {
                    Some(pid) => format!("process {pid} (pid from {})", lock.display()),
                    None => format!("another process (it holds {})", lock.display()),
                };
                write!(
                    f,
                    "data directory {} is in use by {holder}: only one timbala may use a \
                     data directory; stop the other one or choose another --data-directory",
                    dir.display()
                )
            }
            LockError::Io { path, error } => {
                write!(
                    f,
                    "cannot lock the data directory ({}): {error}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LockError {}

impl DirLock {
    /// Locks `dir` (creating it when missing) for this process. Fails at once, without
    /// changing anything in the directory, when another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        // Neither truncated nor written until the lock is ours: the holder's pid stays.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        loop {
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    return Err(LockError::InUse {
                        dir: dir.to_path_buf(),
                        holder: read_pid(&mut file),
                    })
                }
                _ => return Err(io_error(error)),
            }
        }
        // The pid is for the operator's message only: a full disk must not stop a start.
        let pid = format!("{}\n", std::process::id());
        if let Err(e) = file
            .set_len(0)
            .and_then(|()| file.write_all(pid.as_bytes()))
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the pid into the lock file");
        }
        Ok(DirLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let held = DirLock::acquire(&dir).unwrap();
        let pid_text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(pid_text, format!("{}\n", std::process::id()));
        // flock locks belong to the open file description: a second open conflicts
        // even within one process, as a second process would.
        let err = DirLock::acquire(&dir).err().expect("second lock refused");
        match &err {
            LockError::InUse { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            other => panic!("unexpected {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("in use by process"), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), pid_text);
        drop(held);
        DirLock::acquire(&dir).expect("free again once the holder is gone");
    }
}
