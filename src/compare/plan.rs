//! `plan.json`: what a compare trains and what each run's start measured.

use crate::data::tokenizer::TokenizerKind;
use crate::dataset::DataSource;
use crate::train::budget::Budget;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const PLAN_FILE: &str = "plan.json";
const FORMAT: &str = "robo-poet-compare";
const FORMAT_VERSION: u32 = 1;

/// A compare's runs, budget and data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    pub format_version: u32,
    pub budget: Budget,
    pub runs: Vec<PlannedRun>,
    pub tokenizer: TokenizerKind,
    pub min_count: usize,
    pub data: DataSource,
    /// When the compare started (UTC, YYYYMMDD-HHMMSS).
    pub started: String,
    /// What each run's start measured, by run name.
    #[serde(default)]
    pub notes: BTreeMap<String, RunNotes>,
}

/// One run: its name (its folder inside the compare's) and its `train` flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    pub name: String,
    /// The flags as the user wrote them ("" for a preset's defaults).
    pub args: String,
    /// The `train` arguments they mean, `--model` included.
    pub argv: Vec<String>,
}

/// Measured when a run started: facts that are not in its checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunNotes {
    /// The backend it trained on ("cpu (2 threads)", the GPU's name).
    pub device: String,
    /// On a GPU: the driver's measurement of the run's allocations, and the CUDA backend's own
    /// total (tensor table + its small workspace) it is to be compared with.
    pub measured_bytes: Option<u64>,
    pub cuda_analytic_bytes: Option<u64>,
    /// With a seconds budget: seconds per step timed before the run, and over how long.
    pub secs_per_step: Option<f64>,
    pub timed_s: Option<f64>,
}

impl Plan {
    pub fn new(
        budget: Budget,
        runs: Vec<PlannedRun>,
        tokenizer: TokenizerKind,
        min_count: usize,
        data: DataSource,
        started: String,
    ) -> Plan {
        Plan {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            budget,
            runs,
            tokenizer,
            min_count,
            data,
            started,
            notes: BTreeMap::new(),
        }
    }

    /// Writes `dir/plan.json` atomically (a reader or a crash sees the old or the new one).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(PLAN_FILE);
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::checkpoint::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("could not write {}", path.display()))
    }

    /// Reads `dir/plan.json`; errors say what `dir` is instead.
    pub fn load(dir: &Path) -> Result<Plan> {
        let path = dir.join(PLAN_FILE);
        if !dir.is_dir() {
            bail!(
                "--resume {}: no such folder; pass the folder a `robo-poet compare` wrote",
                dir.display()
            );
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} has no {PLAN_FILE}: it is not a folder `robo-poet compare` wrote (a train run is resumed with `robo-poet train --resume`)",
                dir.display()
            ),
            Err(e) => bail!("could not read {}: {e}", path.display()),
        };
        let plan: Plan = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); start a new compare with another --out",
                path.display()
            )
        })?;
        if plan.format != FORMAT || plan.format_version != FORMAT_VERSION {
            bail!(
                "{} is not a compare plan of this version ({} version {}); start a new compare",
                path.display(),
                plan.format,
                plan.format_version
            );
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_back_as_written_and_other_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut plan = Plan::new(
            Budget::Seconds(2.5),
            vec![PlannedRun {
                name: "lstm".into(),
                args: "--hidden 8".into(),
                argv: vec![
                    "--model".into(),
                    "lstm".into(),
                    "--hidden".into(),
                    "8".into(),
                ],
            }],
            TokenizerKind::Char,
            2,
            DataSource::Books { dir: "data".into() },
            "20261201-120000".into(),
        );
        plan.notes.insert(
            "lstm".into(),
            RunNotes {
                device: "cpu".into(),
                secs_per_step: Some(0.25),
                ..RunNotes::default()
            },
        );
        plan.save(d.path()).unwrap();
        assert_eq!(Plan::load(d.path()).unwrap(), plan);
        let e = Plan::load(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("no such folder"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = Plan::load(empty.path()).unwrap_err().to_string();
        assert!(e.contains("has no plan.json"), "{e}");
        std::fs::write(d.path().join(PLAN_FILE), "{").unwrap();
        let e = Plan::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }
}
