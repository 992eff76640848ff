//! One writer per run directory: `train` holds an exclusive lock on `<run>/train.lock` for the
//! whole run, so a second `train --out` or `--resume` on the same folder is refused instead of
//! interleaving metrics.jsonl and racing the first one's checkpoint saves.
//!
//! The lock is `flock` (std's `File::try_lock`): the kernel releases it when the process ends,
//! however it ends (exit, crash, `kill -9`), so a dead run never leaves the folder locked. The file
//! stays in the folder (deleting a lock file races with a process about to lock it) and holds who
//! took the lock last: pid, host and start time, shown to a writer that is refused.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "train.lock";

/// Held for as long as the run writes into its folder; dropping it (or the process ending)
/// releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// Refuses a run directory another `train` holds, saying who, without creating or writing
    /// anything (a folder that is about to be refused for other reasons stays as it was).
    pub fn ensure_free(run_dir: &Path) -> Result<()> {
        let path = run_dir.join(LOCK_FILE);
        let Ok(mut file) = File::open(&path) else {
            return Ok(());
        };
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => Err(in_use(run_dir, &mut file)),
            // Free (released again on drop), or a lock this file system cannot take: acquire
            // will say so.
            _ => Ok(()),
        }
    }

    /// Locks `run_dir` (which must exist) for this process, or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("could not open the run lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(in_use(run_dir, &mut file)),
            Err(TryLockError::Error(e)) => {
                bail!("could not lock the run directory ({}): {e}", path.display())
            }
        }
        let me = holder_line();
        // Best effort: the lock itself is what keeps writers apart, the text only names us.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .and_then(|()| file.flush());
        Ok(RunLock { _file: file, path })
    }
}

/// The refusal of a second writer, naming the holder as its lock file says.
fn in_use(run_dir: &Path, file: &mut File) -> anyhow::Error {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = match holder.trim() {
        "" => "a process that is just starting",
        h => h,
    };
    anyhow::anyhow!(
        "{} is in use by another `robo-poet train` ({holder}); wait for it to finish or stop it (Ctrl-C saves it), or choose another --out",
        run_dir.display()
    )
}

/// "pid 1234 on host gpu-3, started 2026-12-01 09:30:00 UTC".
fn holder_line() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".into());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = super::run_files::utc_stamp(secs);
    let (date, time) = stamp.split_once('-').unwrap_or((&stamp, ""));
    format!(
        "pid {} on host {host}, started {}-{}-{} {}:{}:{} UTC\n",
        std::process::id(),
        &date[..4],
        &date[4..6],
        &date[6..8],
        &time[..2],
        &time[2..4],
        &time[4..6]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        RunLock::ensure_free(dir.path()).unwrap();
        assert!(
            !dir.path().join(LOCK_FILE).exists(),
            "checking created the lock file"
        );
        let first = RunLock::acquire(dir.path()).unwrap();
        // flock locks belong to an open file, so a second open in this process conflicts too.
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is in use by another `robo-poet train`"), "{e}");
        assert!(
            e.contains(&format!("pid {} on host ", std::process::id())),
            "{e}"
        );
        assert!(e.contains("started 20") && e.contains(" UTC"), "{e}");
        let e = RunLock::ensure_free(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is in use by another"), "{e}");
        drop(first);
        RunLock::ensure_free(dir.path()).unwrap();
        let again = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(again.path, dir.path().join(LOCK_FILE));
    }
}
