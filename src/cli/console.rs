//! How a training run looks on the terminal, for `train` and `compare` alike: a progress bar on
//! stderr (when it is a terminal), a summary line per evaluation and the warnings above it, and
//! Ctrl-C / SIGTERM as the run's stop request.

use super::interrupt;
use crate::train::driver::{Evaluation, Observer, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// The [`Observer`] of a run on the console. `prefix` ("[lstm] ") starts every line it prints.
pub struct Console {
    pb: ProgressBar,
    prefix: String,
}

impl Console {
    /// A bar over `steps` steps starting at `at` (hidden unless `show`).
    pub fn new(show: bool, steps: u64, at: u64, prefix: &str) -> Console {
        let pb = if show {
            ProgressBar::new(steps)
        } else {
            ProgressBar::hidden()
        };
        let template = format!(
            "{}{{bar:30.cyan/blue}} {{pos}}/{{len}} steps  {{msg}}  [{{elapsed_precise}} < {{eta_precise}}]",
            prefix
        );
        pb.set_style(
            ProgressStyle::with_template(&template)
                .expect("a valid progress template")
                .progress_chars("=> "),
        );
        pb.set_position(at);
        Console {
            pb,
            prefix: prefix.to_string(),
        }
    }

    /// A line above the progress bar, or on stdout when there is no bar (pb.println of a hidden
    /// bar prints nothing).
    pub fn say(&self, line: &str) {
        if self.pb.is_hidden() {
            println!("{line}");
        } else {
            self.pb.println(line);
        }
    }

    /// Leaves the bar where it stopped (an error or a stop follows).
    pub fn abandon(&self) {
        self.pb.abandon();
    }

    /// Removes the bar of a finished run.
    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

impl Observer for Console {
    fn progress(&mut self, p: &Progress) {
        self.pb.set_position(p.step);
        self.pb.set_message(format!(
            "loss {:.4}  {:.1}k tok/s",
            p.loss,
            p.tokens_per_s / 1e3
        ));
    }

    fn warning(&mut self, line: String) {
        self.say(&format!("{}{line}", self.prefix));
    }

    fn note(&mut self, line: String) {
        self.say(&format!("{}{line}", self.prefix));
    }

    fn evaluated(&mut self, e: &Evaluation) {
        self.say(&format!(
            "{}step {:>6}/{} | train {:.4} | val {:.4} (ppl {:.2}) | grad norm {:.3} | lr {:.2e} | {:.1}k tok/s | {}",
            self.prefix,
            e.step,
            e.steps,
            e.train_loss,
            e.val_loss,
            e.val_loss.exp(),
            e.grad_norm,
            e.lr,
            e.tokens_per_s / 1e3,
            hms(e.elapsed_s)
        ));
    }

    fn stop_requested(&mut self) -> Option<i32> {
        interrupt::requested().map(|i| i.signal)
    }
}

/// 75 s → "1m15s", 3725 s → "1h02m05s".
pub fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
