//! Memory accounting of a model, read off its tensor table: bytes per category, with the tensors
//! the attention-vs-LSTM question turns on (the T×T attention probabilities and scratch, the LSTM
//! gates and cell states) split out as rows of their own.
//!
//! The rows partition the table: every tensor lands in exactly one row, so the rows sum to
//! `TensorTable::total_bytes()` (tested). A backend allocates exactly its table (the CUDA backend
//! adds its small `cuda.*` workspace on top), so these are the bytes a training step holds.

use crate::tensor::{Category, TensorSpec, TensorTable};

/// One row of the memory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemoryRow {
    Parameters,
    Gradients,
    OptimizerState,
    /// `blocks.{l}.attn.probs` (B, NH, T, T), every layer: the saved softmax output
    /// (materialized attention).
    AttentionProbs,
    /// `blocks.{l}.attn.lse` (B, NH, T), every layer: each row's logsumexp (fused attention).
    AttentionLse,
    /// `lstm.{l}.gates` (T, B, 4H), every layer: the saved gate activations.
    LstmGates,
    /// `lstm.{l}.c` (T, B, H), every layer: the saved cell states.
    LstmCellStates,
    /// Saved activations not split out above.
    OtherActivations,
    /// `attn.scratch` (B, NH, T, T), shared by all layers: dropped-out weights, score gradients
    /// (materialized); `attn.delta` (B, NH, T) fused: each row's dO · O.
    AttentionScratch,
    /// Workspace not split out above (gradients of activations).
    OtherWorkspace,
    Inputs,
}

impl MemoryRow {
    pub const ALL: [MemoryRow; 11] = [
        MemoryRow::Parameters,
        MemoryRow::Gradients,
        MemoryRow::OptimizerState,
        MemoryRow::AttentionProbs,
        MemoryRow::AttentionLse,
        MemoryRow::LstmGates,
        MemoryRow::LstmCellStates,
        MemoryRow::OtherActivations,
        MemoryRow::AttentionScratch,
        MemoryRow::OtherWorkspace,
        MemoryRow::Inputs,
    ];

    /// The label printed in the report.
    pub fn label(self) -> &'static str {
        match self {
            MemoryRow::Parameters => "parameters",
            MemoryRow::Gradients => "gradients",
            MemoryRow::OptimizerState => "optimizer state (AdamW m, v)",
            MemoryRow::AttentionProbs => "saved: attention probabilities (B,NH,T,T)",
            MemoryRow::AttentionLse => "saved: attention row logsumexp (B,NH,T)",
            MemoryRow::LstmGates => "saved: LSTM gates (T,B,4H)",
            MemoryRow::LstmCellStates => "saved: LSTM cell states (T,B,H)",
            MemoryRow::OtherActivations => "saved: other activations",
            MemoryRow::AttentionScratch => "workspace: attention scratch (B,NH,T[,T])",
            MemoryRow::OtherWorkspace => "workspace: other",
            MemoryRow::Inputs => "inputs (tokens, targets)",
        }
    }

    /// A stable machine-readable name (JSON and CSV).
    pub fn key(self) -> &'static str {
        match self {
            MemoryRow::Parameters => "parameters",
            MemoryRow::Gradients => "gradients",
            MemoryRow::OptimizerState => "optimizer_state",
            MemoryRow::AttentionProbs => "attention_probs",
            MemoryRow::AttentionLse => "attention_lse",
            MemoryRow::LstmGates => "lstm_gates",
            MemoryRow::LstmCellStates => "lstm_cell_states",
            MemoryRow::OtherActivations => "other_activations",
            MemoryRow::AttentionScratch => "attention_scratch",
            MemoryRow::OtherWorkspace => "other_workspace",
            MemoryRow::Inputs => "inputs",
        }
    }

    /// The table category the row's tensors belong to.
    pub fn category(self) -> Category {
        match self {
            MemoryRow::Parameters => Category::Parameter,
            MemoryRow::Gradients => Category::Gradient,
            MemoryRow::OptimizerState => Category::OptimizerState,
            MemoryRow::AttentionProbs
            | MemoryRow::AttentionLse
            | MemoryRow::LstmGates
            | MemoryRow::LstmCellStates
            | MemoryRow::OtherActivations => Category::Activation,
            MemoryRow::AttentionScratch | MemoryRow::OtherWorkspace => Category::Workspace,
            MemoryRow::Inputs => Category::Input,
        }
    }

    /// The row a tensor is counted in (by category, then by the model's tensor names).
    pub fn of(spec: &TensorSpec) -> MemoryRow {
        let n = spec.name.as_str();
        match spec.category {
            Category::Parameter => MemoryRow::Parameters,
            Category::Gradient => MemoryRow::Gradients,
            Category::OptimizerState => MemoryRow::OptimizerState,
            Category::Input => MemoryRow::Inputs,
            Category::Activation if n.starts_with("blocks.") && n.ends_with(".attn.probs") => {
                MemoryRow::AttentionProbs
            }
            Category::Activation if n.starts_with("blocks.") && n.ends_with(".attn.lse") => {
                MemoryRow::AttentionLse
            }
            Category::Activation if n.starts_with("lstm.") && n.ends_with(".gates") => {
                MemoryRow::LstmGates
            }
            Category::Activation if n.starts_with("lstm.") && n.ends_with(".c") => {
                MemoryRow::LstmCellStates
            }
            Category::Activation => MemoryRow::OtherActivations,
            Category::Workspace if n == "attn.scratch" || n == "attn.delta" => {
                MemoryRow::AttentionScratch
            }
            Category::Workspace => MemoryRow::OtherWorkspace,
        }
    }
}

/// Bytes per row, in `MemoryRow::ALL` order (rows a model lacks are 0).
pub fn memory_rows(table: &TensorTable) -> Vec<(MemoryRow, usize)> {
    MemoryRow::ALL
        .iter()
        .map(|&row| {
            let bytes = table
                .iter()
                .filter(|(_, s)| MemoryRow::of(s) == row)
                .map(|(_, s)| s.bytes())
                .sum();
            (row, bytes)
        })
        .collect()
}

/// Bytes as MiB (2^20 bytes).
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::{AttentionConfig, AttentionImpl, AttentionStyle};
    use crate::model::lstm::LstmConfig;
    use crate::model::{build, ModelConfig};

    fn configs() -> Vec<(ModelConfig, usize)> {
        let att = |style, n_layers, n_heads| {
            ModelConfig::Attention(AttentionConfig {
                style,
                vocab_size: 78,
                seq_len: 16,
                d_model: 8,
                n_layers,
                n_heads,
                pos_emb: style == AttentionStyle::Gpt,
                dropout: 0.1,
                attention: AttentionImpl::Materialized,
            })
        };
        let fused = |c: ModelConfig| match c {
            ModelConfig::Attention(a) => ModelConfig::Attention(AttentionConfig {
                attention: AttentionImpl::Fused,
                ..a
            }),
            other => other,
        };
        let lstm = |n_layers| {
            ModelConfig::Lstm(LstmConfig {
                vocab_size: 78,
                seq_len: 16,
                embed: 8,
                hidden: 8,
                n_layers,
            })
        };
        vec![
            (att(AttentionStyle::Seed, 1, 1), 4),
            (att(AttentionStyle::Seed, 2, 2), 3),
            (att(AttentionStyle::Gpt, 3, 4), 2),
            (lstm(1), 4),
            (lstm(2), 3),
            (fused(att(AttentionStyle::Seed, 2, 2)), 3),
            (fused(att(AttentionStyle::Gpt, 3, 4)), 2),
        ]
    }

    #[test]
    fn rows_partition_the_table() {
        for (cfg, batch) in configs() {
            let model = build(&cfg, batch);
            let table = model.table();
            let rows = memory_rows(table);
            let sum: usize = rows.iter().map(|(_, b)| b).sum();
            assert_eq!(sum, table.total_bytes(), "{}", cfg.describe());
            // Rows regroup categories, never move bytes between them.
            for (cat, bytes) in table.bytes_by_category() {
                let in_rows: usize = rows
                    .iter()
                    .filter(|(r, _)| r.category() == cat)
                    .map(|(_, b)| b)
                    .sum();
                assert_eq!(in_rows, bytes, "{}: {:?}", cfg.describe(), cat);
            }
        }
    }

    #[test]
    fn split_out_rows_have_the_documented_shapes() {
        // (B, NH, T, T) per layer, f32.
        let (cfg, batch) = &configs()[1]; // seed style, 2 layers, 2 heads, B 3, T 16
        let rows = memory_rows(build(cfg, *batch).table());
        let get = |r| rows.iter().find(|(x, _)| *x == r).unwrap().1;
        assert_eq!(get(MemoryRow::AttentionProbs), 2 * 3 * 2 * 16 * 16 * 4);
        assert_eq!(get(MemoryRow::AttentionScratch), 3 * 2 * 16 * 16 * 4);
        assert_eq!(get(MemoryRow::LstmGates), 0);
        // (T, B, 4H) and (T, B, H) per layer.
        let (cfg, batch) = &configs()[4]; // LSTM, 2 layers, H 8, B 3, T 16
        let rows = memory_rows(build(cfg, *batch).table());
        let get = |r| rows.iter().find(|(x, _)| *x == r).unwrap().1;
        assert_eq!(get(MemoryRow::LstmGates), 2 * 16 * 3 * 32 * 4);
        assert_eq!(get(MemoryRow::LstmCellStates), 2 * 16 * 3 * 8 * 4);
        assert_eq!(get(MemoryRow::AttentionProbs), 0);
        // fused: (B, NH, T) per layer, and a (B, NH, T) scratch; nothing T×T
        let (cfg, batch) = &configs()[5]; // seed style, 2 layers, 2 heads, B 3, T 16, fused
        let rows = memory_rows(build(cfg, *batch).table());
        let get = |r| rows.iter().find(|(x, _)| *x == r).unwrap().1;
        assert_eq!(get(MemoryRow::AttentionProbs), 0);
        assert_eq!(get(MemoryRow::AttentionLse), 2 * 3 * 2 * 16 * 4);
        assert_eq!(get(MemoryRow::AttentionScratch), 3 * 2 * 16 * 4);
        assert_eq!(mib(3 << 20), 3.0);
    }
}
