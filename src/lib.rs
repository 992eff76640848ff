//! robo-poet: attention vs LSTM language models on Alice + Hamlet. See README.md.

pub mod checkpoint;
pub mod data;
pub mod gpu;
pub mod ops;
pub mod philox;
pub mod rng;
pub mod tensor;
