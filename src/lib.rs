//! robo-poet: attention vs LSTM language models on Alice + Hamlet. See README.md.

pub mod checkpoint;
pub mod data;
pub mod ops;
pub mod philox;
pub mod rng;
pub mod tensor;
pub mod backend;
pub mod model;
pub mod dataset;
pub mod sampler;
pub mod train;
pub mod cli;
