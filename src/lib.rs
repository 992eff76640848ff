//! robo-poet: attention vs LSTM language models on Alice + Hamlet. See README.md.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod data;
pub mod dataset;
pub mod diagnostics;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod philox;
pub mod plot;
pub mod resources;
pub mod rng;
pub mod sampler;
pub mod tensor;
pub mod train;
