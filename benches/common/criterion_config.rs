//! The Criterion every bench starts from. Criterion draws its report charts with plotters, which
//! this crate builds without system fonts: the embedded chart font is registered first.
//!
//! `ROBO_POET_BENCH_QUICK=1` (the GPU check, which has seconds per bench) shortens criterion's
//! warm-up and measurement and takes 10 samples: medians stay meaningful, confidence intervals
//! widen.

use criterion::Criterion;
use std::time::Duration;

pub fn criterion() -> Criterion {
    robo_poet::plot::register_font().expect("the embedded chart font");
    if quick() {
        Criterion::default()
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1200))
            .sample_size(10)
    } else {
        Criterion::default()
    }
}

/// Whether `ROBO_POET_BENCH_QUICK=1` asks for the short configuration.
#[allow(dead_code)] // not every bench asks
pub fn quick() -> bool {
    std::env::var("ROBO_POET_BENCH_QUICK").is_ok_and(|v| v == "1")
}
