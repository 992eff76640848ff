//! The attention-vs-LSTM experiment as one command (`robo-poet compare`): several runs on the
//! same data, split and tokenizer under one budget, each a normal run directory inside the
//! compare's folder, then one report.
//!
//! - [`plan`]: what a compare trains (`plan.json`: the runs' flags, the budget, the data), kept
//!   so that `compare --resume DIR` continues exactly that after an interruption, and what each
//!   run's start measured (device, driver memory, the timing of a seconds budget).
//! - [`report`]: the numbers of the finished runs, read back from their run directories (the
//!   checkpoints and metrics.jsonl, so a resumed compare reports the same way), the seed's claims
//!   checked against them, and the files: `report.md`, `compare.json` and the charts
//!   ([`charts`]).
//!
//! The runs themselves are trained by the shared driver (`train::driver`), as `train` trains.

pub mod charts;
pub mod plan;
pub mod report;
