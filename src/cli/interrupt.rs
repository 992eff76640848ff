//! Ctrl-C (SIGINT) and SIGTERM during `train` or `compare`: the first one lets the current step finish, a
//! checkpoint be saved and the resume command be printed, then the run exits with 128 + the signal
//! number (130, 143), as a shell reports a process killed by it, so `train && generate` stops
//! there. A second one quits at once, naming the checkpoint that is left.
//!
//! SIGTERM is what `timeout`, job schedulers and `docker stop` send: treating it like Ctrl-C is
//! what saves up to an evaluation interval of work. The signals are received by a thread
//! (signal-hook's iterator), not in a signal handler, so it may print, read the checkpoint pointer
//! and exit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

/// SIGINT and SIGTERM's numbers (the same on every POSIX system).
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

/// The first signal received (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);

/// A run stopped by a signal: `main` exits with [`Interrupted::exit_code`] and prints no error
/// (the run already said what happened and how to continue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    pub fn exit_code(self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", name(self.signal))
    }
}

impl std::error::Error for Interrupted {}

/// "Ctrl-C" or "SIGTERM", for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<Interrupted> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(Interrupted { signal }),
    }
}

/// The run a second signal reports on: its directory and the command that continues it.
static WATCHED: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

/// Listens for SIGINT and SIGTERM (from the first call on) for the run writing into `run_dir`,
/// which `resume` continues (`robo-poet train --resume DIR`); a later call names the next run.
pub fn install(run_dir: &Path, resume: &str) {
    *WATCHED.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((run_dir.to_path_buf(), resume.to_string()));
    static LISTEN: Once = Once::new();
    LISTEN.call_once(listen);
}

fn listen() {
    #[cfg(unix)]
    {
        use signal_hook::iterator::Signals;
        let mut signals = match Signals::new([SIGINT, SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: Ctrl-C and SIGTERM will not save a checkpoint ({e}); the last evaluation's checkpoint is what a kill leaves");
                return;
            }
        };
        std::thread::spawn(move || {
            for signal in signals.forever() {
                received(signal);
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = ctrlc::set_handler(move || received(SIGINT));
    }
}

fn received(signal: i32) {
    if FIRST
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        eprintln!(
            "\n{} received: finishing this step and saving a checkpoint (send it again to quit at once; the last checkpoint stays intact)",
            name(signal)
        );
    } else {
        let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let left = match watched {
            Some((dir, resume)) => kept(&dir, &resume),
            None => "no checkpoint was written yet, so the run cannot be resumed".to_string(),
        };
        eprintln!(
            "\n{} again: quitting at once without saving; {left}",
            name(signal)
        );
        std::process::exit(128 + signal);
    }
}

/// Which checkpoint a run quitting now leaves, and how to continue from it (`resume`).
pub fn kept(run_dir: &Path, resume: &str) -> String {
    match crate::checkpoint::load_meta(run_dir) {
        Ok((meta, dir)) => format!(
            "the last checkpoint, step {} ({}), is intact; continue with: {resume}",
            meta["step"],
            dir.display(),
        ),
        Err(_) => "no checkpoint was written yet, so the run cannot be resumed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_what_a_shell_reports_for_the_signal() {
        assert_eq!(Interrupted { signal: SIGINT }.exit_code(), 130);
        assert_eq!(Interrupted { signal: SIGTERM }.exit_code(), 143);
    }

    #[test]
    fn the_kept_checkpoint_is_named_with_its_step() {
        let d = tempfile::tempdir().unwrap();
        let resume = format!("robo-poet train --resume {}", d.path().display());
        assert!(kept(d.path(), &resume).contains("no checkpoint was written yet"));
        crate::checkpoint::save(d.path(), 12, &serde_json::json!({}), &[], &[]).unwrap();
        let k = kept(d.path(), &resume);
        assert!(
            k.contains("step 12") && k.contains("checkpoint.000001"),
            "{k}"
        );
        assert!(k.contains("robo-poet train --resume"), "{k}");
    }
}
