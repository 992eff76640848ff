//! How long a run trains when runs are compared under one budget: a number of steps, seconds of
//! training on this device, or the analytic training FLOPs of `robo-poet memory`
//! (`model::flops`), each resolved to a step count before the run starts, so that the learning
//! rate schedule knows its length and an interrupted run resumes to the same end.

use crate::model::flops::total_flops;
use crate::model::ModelConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A run's budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Budget {
    Steps(u64),
    /// Seconds of training steps (evaluations and checkpoints not counted), converted to steps
    /// from timed steps on the device before the run.
    Seconds(f64),
    /// Training FLOPs (forward + backward, counted as `model::flops` counts them).
    Flops(f64),
}

const SYNTAX: &str =
    "give steps:N, seconds:S or flops:F (e.g. steps:3000, seconds:900, flops:2e15)";

impl std::str::FromStr for Budget {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Budget> {
        let Some((kind, value)) = s.split_once(':') else {
            bail!("--budget {s:?} has no kind; {SYNTAX}");
        };
        let value = value.trim();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let number = || -> Result<f64> {
            match value.parse::<f64>() {
                Ok(v) if positive(v) => Ok(v),
                Ok(0.0) => {
                    bail!("--budget {s} is no training at all; give a positive {kind} budget")
                }
                _ => bail!("--budget {s}: {value:?} is not a positive number; {SYNTAX}"),
            }
        };
        Ok(match kind.trim() {
            "steps" => match value.parse::<u64>() {
                Ok(0) => bail!("--budget {s} is no training at all; give at least steps:1"),
                Ok(n) => Budget::Steps(n),
                Err(_) => bail!("--budget {s}: {value:?} is not a whole number of steps; {SYNTAX}"),
            },
            "seconds" => Budget::Seconds(number()?),
            "flops" => Budget::Flops(number()?),
            other => bail!("--budget {s}: unknown kind {other:?}; {SYNTAX}"),
        })
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Budget::Steps(n) => write!(f, "steps:{n}"),
            Budget::Seconds(s) => write!(f, "seconds:{s}"),
            Budget::Flops(x) if x >= 1e6 => write!(f, "flops:{x:e}"),
            Budget::Flops(x) => write!(f, "flops:{x}"),
        }
    }
}

impl Budget {
    /// "3000 steps", "900 s of training", "2e15 training FLOPs": for reports.
    pub fn describe(&self) -> String {
        match *self {
            Budget::Steps(n) => format!("{n} steps per run"),
            Budget::Seconds(s) => format!("{s} s of training per run on this device"),
            Budget::Flops(x) => format!("{x:.3e} training FLOPs per run"),
        }
    }
}

/// Analytic FLOPs of one training step (forward + backward) of `cfg` at batch `batch`.
pub fn flops_per_step(cfg: &ModelConfig, batch: usize) -> u64 {
    total_flops(cfg, batch).total()
}

/// The steps a FLOP budget buys: as many whole steps as fit, at least one.
pub fn steps_for_flops(budget: f64, per_step: u64, what: &str) -> Result<u64> {
    let steps = (budget / per_step.max(1) as f64).floor();
    if steps < 1.0 {
        bail!(
            "--budget flops:{budget:e} is less than one training step of {what} ({per_step:.3e} FLOPs); give a larger budget",
            per_step = per_step as f64
        );
    }
    Ok(steps as u64)
}

/// The steps a time budget buys at `secs_per_step`, at least one.
pub fn steps_for_seconds(budget: f64, secs_per_step: f64) -> u64 {
    ((budget / secs_per_step.max(1e-12)).floor() as u64).max(1)
}

/// How long to time steps before a run with a seconds budget: 2% of it, between 0.1 and 20 s.
pub fn timing_seconds(budget: f64) -> f64 {
    (budget * 0.02).clamp(0.1, 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_print_and_refuse_nonsense_naming_the_flag() {
        assert_eq!("steps:3000".parse::<Budget>().unwrap(), Budget::Steps(3000));
        assert_eq!(
            "seconds:1.5".parse::<Budget>().unwrap(),
            Budget::Seconds(1.5)
        );
        assert_eq!("flops:2e15".parse::<Budget>().unwrap(), Budget::Flops(2e15));
        for b in [
            "steps:7",
            "seconds:900",
            "seconds:0.5",
            "flops:2e15",
            "flops:300",
        ] {
            assert_eq!(b.parse::<Budget>().unwrap().to_string(), b);
        }
        for (bad, says) in [
            ("steps:0", "no training at all"),
            ("seconds:0", "no training at all"),
            ("flops:0", "no training at all"),
            ("flops:0.0", "no training at all"),
            ("steps:-1", "not a whole number"),
            ("steps:1.5", "not a whole number"),
            ("seconds:-3", "not a positive number"),
            ("seconds:inf", "not a positive number"),
            ("flops:NaN", "not a positive number"),
            ("minutes:3", "unknown kind"),
            ("3000", "no kind"),
        ] {
            let e = bad.parse::<Budget>().unwrap_err().to_string();
            assert!(e.contains(says) && e.starts_with("--budget"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: one line: {e}");
        }
    }

    #[test]
    fn flops_and_seconds_become_whole_steps() {
        assert_eq!(steps_for_flops(1000.0, 300, "x").unwrap(), 3);
        assert_eq!(steps_for_flops(900.0, 300, "x").unwrap(), 3);
        let e = steps_for_flops(299.0, 300, "the lstm run")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("less than one training step of the lstm run"),
            "{e}"
        );
        assert_eq!(steps_for_seconds(10.0, 0.3), 33);
        assert_eq!(steps_for_seconds(0.1, 5.0), 1);
        assert_eq!(timing_seconds(900.0), 18.0);
        assert_eq!(timing_seconds(1.0), 0.1);
        assert_eq!(timing_seconds(1e5), 20.0);
    }
}
