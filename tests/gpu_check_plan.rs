//! The GPU check's plan (scripts/gpu/run.sh), checked without a GPU through its dry run
//! (`GPU_CHECK_DRY=1`: every step is a sleep of its cap on a simulated clock): the caps fit the
//! 480 s budget, the smoke step comes first and the sanitizers last, and a run cut short still
//! answers the first questions. A test of the plan, not of the GPU.

use std::path::Path;
use std::process::Command;

const BUDGET_S: u64 = 480;
/// The order of the phases (run.sh's header says why).
const PHASES: [&str; 7] = [
    "setup",
    "smoke",
    "parity",
    "speed",
    "accounting",
    "sanitizers",
    "extras",
];

struct Row {
    phase: String,
    step: String,
    result: String,
    seconds: u64,
    cap: u64,
}

/// Runs the dry run into a fresh folder; returns the folder and the steps table of summary.md.
fn dry_run(budget: Option<u64>) -> (tempfile::TempDir, String, Vec<Row>) {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(out.path()).env("GPU_CHECK_DRY", "1");
    if let Some(b) = budget {
        cmd.env("GPU_CHECK_BUDGET_S", b.to_string());
    } else {
        cmd.env_remove("GPU_CHECK_BUDGET_S");
    }
    let o = cmd.output().expect("bash runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "the dry run failed:\n{log}");
    let summary = std::fs::read_to_string(out.path().join("summary.md")).expect("summary.md");
    let rows: Vec<Row> = summary
        .lines()
        .skip_while(|l| !l.starts_with("| phase | step |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let c: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(c.len(), 6, "a steps row has 6 cells: {l}");
            Row {
                phase: c[0].into(),
                step: c[1].into(),
                result: c[2].into(),
                seconds: c[3].parse().unwrap_or_else(|_| panic!("seconds in {l}")),
                cap: c[4].parse().unwrap_or_else(|_| panic!("cap in {l}")),
            }
        })
        .collect();
    assert!(!rows.is_empty(), "no steps table in summary.md:\n{summary}");
    (out, summary, rows)
}

fn phase_index(p: &str) -> usize {
    PHASES
        .iter()
        .position(|&x| x == p)
        .unwrap_or_else(|| panic!("unknown phase {p}"))
}

#[test]
fn gpu_check_plan_fits_the_budget_smoke_first_sanitizers_last() {
    let (out, summary, rows) = dry_run(None);
    // What comes back: at most 8 files (the device tool's limit); run.sh leaves two.
    let mut files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["logs.tar.gz", "summary.md"]);
    assert!(summary.contains("DRY RUN"), "{summary}");

    assert_eq!(rows[0].phase, "setup");
    assert_eq!(rows[1].phase, "smoke", "the smoke step comes first");
    assert!(rows[1].cap <= 60, "smoke cap {} s", rows[1].cap);
    for w in rows.windows(2) {
        assert!(
            phase_index(&w[0].phase) <= phase_index(&w[1].phase),
            "{} ({}) before {} ({})",
            w[0].step,
            w[0].phase,
            w[1].step,
            w[1].phase
        );
    }
    let planned: Vec<&Row> = rows.iter().filter(|r| r.phase != "extras").collect();
    for r in &planned {
        assert_eq!(r.result, "dry run", "{} was not planned in full", r.step);
        assert_eq!(r.seconds, r.cap, "{} was cut to {} s", r.step, r.seconds);
    }
    let total: u64 = planned.iter().map(|r| r.cap).sum();
    assert!(
        total <= BUDGET_S - 8,
        "the caps add up to {total} s: more than the {BUDGET_S} s budget minus the summary's reserve"
    );
    for phase in ["smoke", "parity", "speed", "sanitizers"] {
        assert!(planned.iter().any(|r| r.phase == phase), "no {phase} step");
    }
    let sanitizers: Vec<&&Row> = planned.iter().filter(|r| r.phase == "sanitizers").collect();
    assert_eq!(sanitizers.len(), 2, "memcheck and racecheck");
    assert!(sanitizers.iter().all(|r| r.cap <= 60));
    // the PyTorch peer is a speed step, before the sanitizers
    assert!(planned
        .iter()
        .any(|r| r.phase == "speed" && r.step.contains("PyTorch")));
    let total_line = summary
        .lines()
        .find(|l| l.starts_with("total: "))
        .expect("a total line");
    let secs: u64 = total_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(secs <= BUDGET_S, "{total_line}");
}

#[test]
fn gpu_check_plan_cut_short_keeps_the_first_answers() {
    // A lease with a third of the time: smoke and parity still run, in full; what does not fit
    // is recorded as skipped, and the summary is still written.
    let (_out, _summary, rows) = dry_run(Some(160));
    let ran: Vec<&str> = rows
        .iter()
        .filter(|r| r.result == "dry run")
        .map(|r| r.phase.as_str())
        .collect();
    assert!(ran.starts_with(&["setup", "smoke", "parity"]), "{ran:?}");
    let smoke = rows.iter().find(|r| r.phase == "smoke").unwrap();
    assert_eq!(smoke.seconds, smoke.cap);
    assert!(
        rows.iter()
            .any(|r| r.phase == "sanitizers" && r.result.starts_with("SKIPPED")),
        "the sanitizers are the ones left out"
    );
    let used: u64 = rows.iter().map(|r| r.seconds).sum();
    assert!(used <= 160, "{used} s used of 160");
}
