//! Occupancy: how many blocks of a kernel one SM can hold at once, from the kernel's registers
//! and static shared memory and the launch's block size and dynamic shared memory, by the rules
//! `cuOccupancyMaxActiveBlocksPerMultiprocessor` applies (the CUDA occupancy calculator,
//! `cuda_occupancy.h`). The emulated device ([`super::EmuDevice`]) answers occupancy queries with
//! it and refuses cooperative grids that could not all be resident, as the driver does; the GPU
//! answers for itself.
//!
//! The rules, per SM, the smallest of four limits:
//! * threads: 2048 per SM, counted in whole warps (a block of 96 threads takes 3 warp slots of 64);
//! * blocks: 32 resident blocks;
//! * registers: allocated per warp, `registers × 32` rounded up to 256 (so per thread rounded up to
//!   a multiple of 8); the 65,536 registers are split between 4 sub-partitions, each holding whole
//!   warps (16,384 / per-warp allocation of them); a block that needs more than 65,536 (its warps
//!   rounded up to a multiple of 4, as the hardware checks it) or a kernel over 255 registers per
//!   thread fits nowhere;
//! * shared memory: static + dynamic + 1 KiB the driver reserves per block, rounded up to 128
//!   bytes, out of 228 KiB (the default carveout gives shared memory all it can hold). A block may
//!   use 48 KiB (plus the reserved KiB), or up to 227 KiB when the kernel's
//!   `MAX_DYNAMIC_SHARED_SIZE_BYTES` attribute was raised (and never more dynamic memory than the
//!   attribute); a block over its limit fits nowhere.

use std::fmt;

/// What one SM offers and how it hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmLimits {
    pub max_threads_per_block: u32,
    pub max_threads: u32,
    pub max_blocks: u32,
    pub registers: u32,
    pub registers_per_block: u32,
    /// Registers are allocated to a warp in units of this many.
    pub register_unit: u32,
    /// Each holds `registers / sub_partitions` registers and only whole warps.
    pub sub_partitions: u32,
    pub max_registers_per_thread: u32,
    pub shared_bytes: u32,
    /// Shared memory the driver keeps for itself in every block (compute capability 8.0 on).
    pub shared_reserved_per_block: u32,
    /// Shared memory is allocated to a block in units of this many bytes.
    pub shared_unit: u32,
    /// What a block may use without the opt-in, static and dynamic together.
    pub shared_per_block: u32,
    /// The most a block may opt in to (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).
    pub shared_per_block_optin: u32,
}

/// Compute capability 9.0 (H100, H200): the CUDA programming guide's table, as
/// /work/shared/docs/GPU.md lists it.
pub const SM_90: SmLimits = SmLimits {
    max_threads_per_block: 1024,
    max_threads: 2048,
    max_blocks: 32,
    registers: 65536,
    registers_per_block: 65536,
    register_unit: 256,
    sub_partitions: 4,
    max_registers_per_thread: 255,
    shared_bytes: 228 * 1024,
    shared_reserved_per_block: 1024,
    shared_unit: 128,
    shared_per_block: super::device::DEFAULT_SHARED_BYTES,
    shared_per_block_optin: super::device::SHARED_OPTIN_SM90,
};

/// What occupancy needs to know of a kernel: what ptxas reports for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub registers: u32,
    pub static_shared_bytes: u32,
}

/// Blocks of one launch shape per SM, and each limit's own count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks: u32,
    pub by_threads: u32,
    pub by_blocks: u32,
    pub by_registers: u32,
    pub by_shared: u32,
}

impl Occupancy {
    /// The limits that give [`Occupancy::blocks`], for messages: "registers", "threads and blocks".
    pub fn limited_by(&self) -> String {
        let named = [
            (self.by_threads, "threads"),
            (self.by_blocks, "resident blocks"),
            (self.by_registers, "registers"),
            (self.by_shared, "shared memory"),
        ];
        let v: Vec<&str> = named
            .iter()
            .filter(|(n, _)| *n == self.blocks)
            .map(|(_, what)| *what)
            .collect();
        v.join(" and ")
    }
}

impl fmt::Display for Occupancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per SM, limited by {}",
            self.blocks,
            self.limited_by()
        )
    }
}

/// Blocks of `block_threads` threads with `dynamic_shared` bytes of dynamic shared memory that one
/// SM holds at once. `max_dynamic_shared` is the kernel's `MAX_DYNAMIC_SHARED_SIZE_BYTES`
/// attribute where raised (the opt-in), `None` by default.
pub fn occupancy(
    sm: &SmLimits,
    kernel: KernelResources,
    block_threads: u32,
    dynamic_shared: u32,
    max_dynamic_shared: Option<u32>,
) -> Occupancy {
    if block_threads == 0 || block_threads > sm.max_threads_per_block {
        return Occupancy {
            blocks: 0,
            by_threads: 0,
            by_blocks: sm.max_blocks,
            by_registers: 0,
            by_shared: 0,
        };
    }
    let warps = block_threads.div_ceil(32);
    let by_threads = sm.max_threads / 32 / warps;

    let per_warp = (kernel.registers as u64 * 32).next_multiple_of(sm.register_unit as u64);
    let fits = kernel.registers <= sm.max_registers_per_thread
        && per_warp * (warps.next_multiple_of(sm.sub_partitions) as u64)
            <= sm.registers_per_block as u64;
    // A kernel of no registers (an empty one) is limited by nothing here.
    let by_registers = match ((sm.registers / sm.sub_partitions) as u64).checked_div(per_warp) {
        _ if !fits => 0,
        None => u32::MAX,
        Some(per_partition) => (per_partition * sm.sub_partitions as u64 / warps as u64) as u32,
    };

    let fixed = kernel.static_shared_bytes as u64 + sm.shared_reserved_per_block as u64;
    let allocated = (fixed + dynamic_shared as u64).next_multiple_of(sm.shared_unit as u64);
    let per_block_limit = sm.shared_reserved_per_block as u64
        + match max_dynamic_shared {
            Some(max) if fixed + max as u64 > sm.shared_per_block as u64 => {
                sm.shared_per_block_optin as u64
            }
            _ => sm.shared_per_block as u64,
        };
    let by_shared = if max_dynamic_shared.is_some_and(|max| dynamic_shared > max)
        || allocated > per_block_limit
    {
        0
    } else {
        (sm.shared_bytes as u64 / allocated) as u32
    };

    Occupancy {
        blocks: by_threads
            .min(sm.max_blocks)
            .min(by_registers)
            .min(by_shared),
        by_threads,
        by_blocks: sm.max_blocks,
        by_registers,
        by_shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(registers: u32, static_shared: u32, threads: u32, dynamic: u32) -> u32 {
        let k = KernelResources {
            registers,
            static_shared_bytes: static_shared,
        };
        occupancy(&SM_90, k, threads, dynamic, None).blocks
    }

    #[test]
    fn each_limit_by_hand() {
        // threads: 2048 / 256; 64 warp slots / 3 warps for 96 threads (21 blocks, 2016 threads)
        assert_eq!(blocks(32, 0, 256, 0), 8);
        assert_eq!(blocks(32, 0, 96, 0), 21);
        assert_eq!(blocks(32, 0, 1024, 0), 2);
        // resident blocks: 64 warps would fit, 32 blocks do
        assert_eq!(blocks(32, 0, 32, 0), 32);
        // registers: 64 per thread = 2048 per warp, 8 warps per sub-partition, 32 per SM
        assert_eq!(blocks(64, 0, 256, 0), 4);
        // 33 registers allocate as 40: 1280 per warp, 12 warps per sub-partition, 48 per SM
        assert_eq!(blocks(33, 0, 128, 0), 12);
        assert_eq!(blocks(40, 0, 128, 0), 12);
        // 255 registers: 8192 per warp, 2 warps per sub-partition
        assert_eq!(blocks(255, 0, 128, 0), 2);
        // 72 × 32 rounded = 2304 per warp × 32 warps > 65,536: the block fits nowhere
        assert_eq!(blocks(72, 0, 1024, 0), 0);
        assert_eq!(blocks(256, 0, 32, 0), 0);
        // shared memory: 10,000 + 1024 reserved = 11,024, allocated as 11,136: 20 blocks (21 if
        // the 128-byte unit were ignored)
        assert_eq!(blocks(32, 0, 64, 10_000), 20);
        assert_eq!(blocks(32, 40 * 1024, 128, 0), 5);
        assert_eq!(blocks(32, 0, 128, 48 * 1024), 4);
        assert_eq!(
            blocks(32, 0, 128, 48 * 1024 + 1),
            0,
            "over 48 KiB without the opt-in"
        );
    }

    #[test]
    fn the_opt_in_raises_the_per_block_limit_to_227_kib() {
        let k = KernelResources {
            registers: 32,
            static_shared_bytes: 0,
        };
        let at = |dynamic: u32, attr: u32| occupancy(&SM_90, k, 128, dynamic, Some(attr)).blocks;
        assert_eq!(at(100 * 1024, 100 * 1024), 2);
        assert_eq!(at(100 * 1024 + 1, 100 * 1024), 0, "more than the attribute");
        assert_eq!(at(113 * 1024, 227 * 1024), 2, "2 × (113 + 1) KiB = 228 KiB");
        assert_eq!(at(227 * 1024, 227 * 1024), 1);
        let with_static = KernelResources {
            static_shared_bytes: 128,
            ..k
        };
        assert_eq!(
            occupancy(&SM_90, with_static, 128, 227 * 1024, Some(227 * 1024)).blocks,
            0,
            "static + dynamic over 227 KiB"
        );
    }

    #[test]
    fn the_limiting_factor_is_named() {
        let k = KernelResources {
            registers: 64,
            static_shared_bytes: 0,
        };
        let o = occupancy(&SM_90, k, 256, 0, None);
        assert_eq!(o.to_string(), "4 per SM, limited by registers");
        let k = KernelResources { registers: 32, ..k };
        let o = occupancy(&SM_90, k, 256, 0, None);
        assert_eq!(o.to_string(), "8 per SM, limited by threads and registers");
        assert_eq!(occupancy(&SM_90, k, 1025, 0, None).blocks, 0);
    }
}
