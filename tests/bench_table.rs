//! The closing table of `cargo bench --bench attention_vs_lstm` (benches/common/speed_table.rs),
//! on samples made up here: CI never runs the bench itself.

#[path = "../benches/common/speed_table.rs"]
mod speed_table;
use speed_table::*;

/// Two warm-up calls then `n` measurement samples of `iters` iterations at `secs` each (plus a
/// spread), as criterion calls a routine.
fn samples(n: usize, secs_per_iter: f64) -> Vec<(u64, f64)> {
    let mut v = vec![(1, 100.0), (2, 100.0)];
    for k in 0..n {
        let iters = 4 * (k as u64 + 1);
        // Sample k runs (1 + k/100) times slower: the median is the middle sample.
        v.push((
            iters,
            iters as f64 * secs_per_iter * (1.0 + k as f64 / 100.0),
        ));
    }
    v
}

#[test]
fn medians_are_over_the_measurement_samples_only() {
    // The two slow warm-up calls come first and are not in the median.
    let m = median_secs(&samples(10, 1e-3), 10).unwrap();
    assert!((m - 1e-3 * 1.045).abs() < 1e-12, "{m}");
    let m = median_secs(&samples(9, 2e-3), 9).unwrap();
    assert!((m - 2e-3 * 1.04).abs() < 1e-12, "{m}");
    assert_eq!(median_secs(&[], 10), None);
}

#[test]
fn the_table_has_every_length_ratio_and_memory_in_all_three_forms() {
    let mut r = Records::default();
    for t in [64, 128] {
        for (model, base) in [("attention", 1e-3), ("lstm", 4e-3)] {
            r.tokens.insert((t, model), 4 * t as u64);
            r.memory.insert((t, model), (1024 * 1024 * t as u64, None));
            for (m, factor) in MEASURES.into_iter().zip([1.0, 3.0, 4.0]) {
                for (iters, secs) in samples(10, base * factor) {
                    r.record((t, model, m), iters, secs);
                }
            }
        }
    }
    let rows = rows(&r, 10);
    assert_eq!(rows.len(), 2);
    let want = 4.0 * 64.0 / (1e-3 * 1.045); // tokens per iteration / median seconds
    let got = rows[0].tokens_per_s[0][0].unwrap();
    assert!((got / want - 1.0).abs() < 1e-12, "{got} vs {want}");
    for m in 0..3 {
        assert!(
            (rows[1].ratio(m).unwrap() - 4.0).abs() < 1e-9,
            "attention 4x the LSTM"
        );
    }
    let md = markdown("cpu (2 threads)", &rows);
    assert!(
        md.starts_with("attention_vs_lstm on cpu (2 threads)"),
        "{md}"
    );
    let line = md.lines().find(|l| l.starts_with("| 128 |")).unwrap();
    assert_eq!(line.matches("4.00x").count(), 3, "{line}");
    assert!(line.ends_with("| 128.00 | 128.00 |"), "{line}");
    assert!(!md.contains("driver)"), "no GPU, no driver columns:\n{md}");
    let csv = csv(&rows);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    let head: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(head.len(), 1 + 6 + 3 + 4);
    assert_eq!(head[3], "attention_train_step_tokens_per_s");
    let cells: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(cells.len(), head.len());
    assert_eq!(cells[0], "128");
    assert_eq!(cells[10], (128u64 * 1024 * 1024).to_string());
    assert_eq!(cells[12], "", "no measured bytes without a GPU");
    let j = json("cpu", &rows);
    assert_eq!(j["rows"][1]["seq_len"], 128);
    assert!(
        (j["rows"][1]["attention_over_lstm"]["train_step"]
            .as_f64()
            .unwrap()
            - 4.0)
            .abs()
            < 1e-9
    );
    assert_eq!(j["rows"][0]["lstm"]["bytes"], 64 * 1024 * 1024);

    // On a GPU the driver's figures sit beside the analytic ones.
    r.memory.insert((64, "attention"), (1 << 20, Some(3 << 20)));
    let md = markdown("cuda (H200)", &speed_table::rows(&r, 10));
    assert!(md.contains("attention MiB (driver)"), "{md}");
    let line = md.lines().find(|l| l.starts_with("| 64 |")).unwrap();
    assert!(line.ends_with("| 1.00 | 64.00 | 3.00 | - |"), "{line}");
}
