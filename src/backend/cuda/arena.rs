//! The CUDA backend's device memory: every tensor of the table in one allocation, laid out so
//! that a training step touches it in few operations:
//!
//! ```text
//! [ parameters | first moments | second moments | activations | inputs | backend state ]
//! [ gradients | workspace ]                         <- cleared by one memset per step
//! ```
//!
//! Parameters, moments and gradients hold the parameters in the same order at the same offset
//! within their region, so the multi-tensor kernels (kernels/optim.cu) address all four with one
//! chunk table; gradients and workspace are adjacent, so one memset clears them; the inputs
//! (token ids, targets) are adjacent, so a batch is one upload. Every tensor starts on a 256-byte
//! boundary (cudaMalloc's alignment, which vector loads rely on).

use crate::tensor::{Category, ParamIds, TensorId, TensorTable};

/// Alignment of every tensor in the arena, in bytes.
pub const ALIGN: usize = 256;

/// A byte range of the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub start: usize,
    pub bytes: usize,
}

/// One parameter of the multi-tensor regions: its ids, its offset (in floats) within each of the
/// four regions, its length and whether AdamW decays it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSlot {
    pub ids: ParamIds,
    pub offset: usize,
    pub len: usize,
    pub decay: bool,
}

/// Where every tensor of a table lives.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Byte offset of each tensor, by `TensorId` index.
    pub offsets: Vec<usize>,
    /// Bytes of the whole arena.
    pub total: usize,
    pub params: Region,
    pub m: Region,
    pub v: Region,
    pub grads: Region,
    /// Gradients and workspace: what a step clears.
    pub cleared: Region,
    /// The input tensors (token ids, targets), adjacent.
    pub inputs: Region,
    /// The parameters, in table order.
    pub slots: Vec<ParamSlot>,
}

/// The ids of a parameter's gradient and moments, by the table's naming (`TensorTable::add_param`).
fn param_ids(table: &TensorTable, param: TensorId) -> Option<ParamIds> {
    let name = table.name(param);
    Some(ParamIds {
        param,
        grad: table.get(&format!("grad.{name}"))?,
        m: table.get(&format!("adam_m.{name}"))?,
        v: table.get(&format!("adam_v.{name}"))?,
    })
}

/// Lays out `table`; the tensors in `persistent` (of the workspace category) keep their contents
/// across steps instead of being cleared.
pub fn layout(table: &TensorTable, persistent: &[TensorId]) -> Layout {
    let mut offsets = vec![usize::MAX; table.len()];
    let mut at = 0usize;
    let place = |id: TensorId, at: &mut usize, offsets: &mut Vec<usize>| {
        assert_eq!(
            offsets[id.index()],
            usize::MAX,
            "{} placed twice",
            table.name(id)
        );
        offsets[id.index()] = *at;
        *at += table.spec(id).bytes().next_multiple_of(ALIGN);
    };
    let slots_ids: Vec<ParamIds> = table
        .iter()
        .filter(|(_, s)| s.category == Category::Parameter)
        .map(|(id, _)| {
            param_ids(table, id).unwrap_or_else(|| {
                panic!(
                    "parameter {} has no grad./adam_m./adam_v. tensors (add it with TensorTable::add_param)",
                    table.name(id)
                )
            })
        })
        .collect();
    // parameters, then each moment, in the same order: equal relative offsets
    let region = |pick: fn(&ParamIds) -> TensorId, at: &mut usize, offsets: &mut Vec<usize>| {
        let start = *at;
        for p in &slots_ids {
            place(pick(p), at, offsets);
        }
        Region {
            start,
            bytes: *at - start,
        }
    };
    let params = region(|p| p.param, &mut at, &mut offsets);
    let m = region(|p| p.m, &mut at, &mut offsets);
    let v = region(|p| p.v, &mut at, &mut offsets);
    let by_cat = |c: Category| -> Vec<TensorId> {
        table
            .iter()
            .filter(|(id, s)| s.category == c && !persistent.contains(id))
            .map(|(id, _)| id)
            .collect()
    };
    for id in by_cat(Category::Activation) {
        place(id, &mut at, &mut offsets);
    }
    let inputs_start = at;
    for id in by_cat(Category::Input) {
        place(id, &mut at, &mut offsets);
    }
    let inputs = Region {
        start: inputs_start,
        bytes: at - inputs_start,
    };
    for &id in persistent {
        place(id, &mut at, &mut offsets);
    }
    let cleared_start = at;
    let grads_start = at;
    for p in &slots_ids {
        place(p.grad, &mut at, &mut offsets);
    }
    let grads = Region {
        start: grads_start,
        bytes: at - grads_start,
    };
    for id in by_cat(Category::Workspace) {
        place(id, &mut at, &mut offsets);
    }
    // any gradient that is not a parameter's (none today) is cleared too
    for id in by_cat(Category::Gradient) {
        if offsets[id.index()] == usize::MAX {
            place(id, &mut at, &mut offsets);
        }
    }
    let cleared = Region {
        start: cleared_start,
        bytes: at - cleared_start,
    };
    for (id, s) in table.iter() {
        assert!(
            offsets[id.index()] != usize::MAX,
            "{} ({:?}) was not placed",
            s.name,
            s.category
        );
    }
    let slots = slots_ids
        .iter()
        .map(|p| {
            let offset = offsets[p.param.index()] - params.start;
            for (region, id) in [(m, p.m), (v, p.v), (grads, p.grad)] {
                assert_eq!(offsets[id.index()] - region.start, offset);
            }
            ParamSlot {
                ids: *p,
                offset: offset / 4,
                len: table.numel(p.param),
                decay: table.spec(p.param).decay,
            }
        })
        .collect();
    Layout {
        offsets,
        total: at.max(ALIGN),
        params,
        m,
        v,
        grads,
        cleared,
        inputs,
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_moments_and_gradients_share_offsets_and_the_cleared_part_is_contiguous() {
        let mut t = TensorTable::new();
        let a = t.add_param("a", &[3, 5], true);
        let x = t.add("x", Category::Activation, &[7]);
        let b = t.add_param("b", &[70], false);
        let tokens = t.add_u32("tokens", Category::Input, &[2, 3]);
        let targets = t.add_u32("targets", Category::Input, &[2, 3]);
        let w = t.add("d.x", Category::Workspace, &[9]);
        let keep = t.add_u32("state", Category::Workspace, &[4]);
        let l = layout(&t, &[keep]);
        assert_eq!(l.slots.len(), 2);
        assert_eq!(
            (l.slots[0].ids, l.slots[0].offset, l.slots[0].len),
            (a, 0, 15)
        );
        assert_eq!(
            (
                l.slots[1].ids,
                l.slots[1].offset,
                l.slots[1].len,
                l.slots[1].decay
            ),
            (b, ALIGN / 4, 70, false)
        );
        for s in &l.slots {
            assert_eq!(
                l.offsets[s.ids.param.index()],
                l.params.start + 4 * s.offset
            );
            assert_eq!(l.offsets[s.ids.m.index()], l.m.start + 4 * s.offset);
            assert_eq!(l.offsets[s.ids.v.index()], l.v.start + 4 * s.offset);
            assert_eq!(l.offsets[s.ids.grad.index()], l.grads.start + 4 * s.offset);
        }
        let off = |id: TensorId| l.offsets[id.index()];
        // gradients then workspace, and nothing else, in the cleared range
        assert_eq!(l.cleared.start, l.grads.start);
        assert!(off(w) >= l.cleared.start && off(w) < l.cleared.start + l.cleared.bytes);
        assert!(
            off(keep) < l.cleared.start,
            "persistent state is not cleared"
        );
        assert!(off(x) < l.cleared.start);
        assert_eq!(l.cleared.start + l.cleared.bytes, l.total);
        // inputs adjacent, in table order
        assert_eq!(l.inputs.start, off(tokens));
        assert_eq!(off(targets), off(tokens) + ALIGN);
        assert_eq!(l.inputs.bytes, 2 * ALIGN);
        assert!(l.offsets.iter().all(|o| o % ALIGN == 0));
    }
}
