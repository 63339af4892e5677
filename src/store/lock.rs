//! One agent per `data_dir`: an exclusive lock on `<data_dir>/epm-agent.lock`
//! taken before the store is opened or written and held for the life of
//! the process (the operating system lets go of it when the process ends,
//! however it ends). A second `epm-agent run` on the same folder — a
//! technician's `sudo epm-agent run` beside the service, two services with
//! one `data_dir` — is refused at once instead of delivering from the same
//! cursors. Readers (`status`, `report`, `tail`, ...) take no lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside `data_dir`; it holds the owner's pid.
pub const LOCK_FILE: &str = "epm-agent.lock";

/// Held while the agent runs; dropping it releases the folder.
#[derive(Debug)]
pub struct DataDirLock {
    /// The lock lives as long as this handle.
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another epm-agent ({}) is using {}: stop it first (`systemctl stop epm-agent`), or give this one another data_dir", holder(*pid), data_dir.display())]
    Held { data_dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"))
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (which must exist), or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let failed = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    data_dir: data_dir.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(failed(source)),
        }
        // Ours now: say who we are, for the next one that asks.
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        if let Err(error) = written {
            tracing::debug!("cannot write the pid into {}: {error}", path.display());
        }
        Ok(DataDirLock { _file: file })
    }
}

/// The pid the holder wrote (unreadable while locked on some systems).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_and_names_the_holder() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let first = DataDirLock::acquire(folder.path()).expect("the first lock");
        let Err(error) = DataDirLock::acquire(folder.path()) else {
            panic!("a second lock was granted");
        };
        let message = error.to_string();
        #[cfg(unix)]
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&folder.path().display().to_string()),
            "{message}"
        );
        drop(first);
        DataDirLock::acquire(folder.path()).expect("free again once released");
    }
}
