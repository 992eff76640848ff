//! [`EmuDevice`]: the kernel test bench's device. It runs the kernels of kernels/*.cu on the CPU,
//! compiled by build.rs against kernels/emu/cuda_emu.h, behind the same [`Device`] interface as a
//! GPU, so the CUDA backend's host code is tested unchanged on machines without one.
//! How it works, what it catches and what it cannot: docs/KERNEL_BENCH.md.
//!
//! Device memory is host memory with the driver's contract made checkable: fresh allocations are
//! filled with 0xFF bytes (NaN in every float format, -1 as an integer), so host code that reads
//! memory it never wrote sees NaN; every copy is checked against the live allocations; and each
//! allocation sits between guard bands that are checked after every launch, so a kernel that
//! writes past either end of a buffer fails its launch with the kernel's name and launch shape.
//! Under AddressSanitizer (`ROBO_POET_EMU_SANITIZE=address`) allocations are exact instead and
//! ASan reports every out-of-bounds access, reads included, at the kernel's source line.
//!
//! The device models an H200 for occupancy and cooperative launches (132 SMs of compute
//! capability 9.0, [`super::occupancy`]): a cooperative grid runs with every block resident at
//! once, and is refused, as the driver refuses it, when more blocks than fit at once are asked for.

use super::device::{
    Counted, Counters, Device, DeviceCounts, DevicePtr, GpuError, GraphId, LaunchConfig,
    DEFAULT_SHARED_BYTES, SHARED_OPTIN_SM90,
};
use super::occupancy::{occupancy, KernelResources, Occupancy, SM_90};
use std::alloc::{self, Layout};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

/// The C ABI of one launch; mirrors `emu::LaunchDesc` in kernels/emu/launch.h.
#[repr(C)]
pub struct EmuLaunchDesc {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u64,
    pub params: *mut *mut c_void,
    pub num_params: u64,
    pub error: *mut c_char,
    pub error_cap: u64,
    /// 1 to run each block's threads from the last to the first.
    pub reverse: u32,
    /// 1: run nothing; report the kernel's parameter count (in `num_params`) and sizes.
    pub query_params: u32,
    pub param_sizes: *mut u64,
    pub param_sizes_cap: u64,
    /// Static + dynamic shared memory a block may use (0: 48 KiB).
    pub shared_limit: u64,
    /// 1: a cooperative launch, every block of the grid resident at once (grid_sync works).
    pub cooperative: u32,
    /// Out: the most static shared memory one block of the launch used.
    pub static_shared_used: u64,
}

/// One emulated kernel, as build.rs lists it: the emulated `CUfunction`.
#[derive(Clone, Copy, Debug)]
pub struct EmuKernel {
    /// The kernel's name in its .cu file.
    pub name: &'static str,
    /// Its source file, relative to the crate root.
    pub source: &'static str,
    /// Runs one launch; 0 on success, otherwise an error message is in the descriptor.
    pub launch: unsafe extern "C" fn(*mut EmuLaunchDesc) -> i32,
}

mod project {
    use super::{EmuKernel, EmuLaunchDesc};
    include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));
}

/// The kernels of kernels/*.cu, found by build.rs.
pub use project::KERNELS;

/// The sanitizer the emulated kernels were built with (`ROBO_POET_EMU_SANITIZE`), if any.
pub const SANITIZER: Option<&str> = if cfg!(emu_sanitize = "address") {
    Some("address")
} else if cfg!(emu_sanitize = "thread") {
    Some("thread")
} else {
    None
};

/// Whether the emulated kernels were compiled with FMA contraction (`ROBO_POET_EMU_FMA=1`), as
/// NVRTC compiles them for the GPU.
pub const FMA_CONTRACTION: bool = cfg!(emu_fma);

// Return codes of a launcher (kernels/emu/launch.h).
const LAUNCH_OK: i32 = 0;
const LAUNCH_REJECTED: i32 = 1;

/// Fill of fresh allocations: NaN as f32, f16, bf16 and f64; -1 as any signed integer.
const POISON: u8 = 0xFF;
/// Guard bands repeat this little-endian word (0xFFBADBAD: a NaN when read as f32).
const GUARD: [u8; 4] = [0xAD, 0xDB, 0xBA, 0xFF];
/// Guard band on each side of an allocation: its size, within these bounds (a kernel that writes
/// further past the end than this lands in other memory; AddressSanitizer has no such limit).
const GUARD_MIN: usize = 4096;
const GUARD_MAX: usize = 64 * 1024;
/// cudaMalloc's alignment.
const ALIGN: usize = 256;

struct Allocation {
    /// Start of the host block (the leading guard band).
    base: usize,
    layout: Layout,
    /// Bytes the caller asked for.
    size: usize,
    /// Bytes of guard band on each side (0 under AddressSanitizer).
    guard: usize,
}

impl Allocation {
    fn user(&self) -> usize {
        self.base + self.guard
    }

    /// (first, last) offsets relative to the user start of guard bytes that changed.
    fn damaged_guard(&self) -> Option<(isize, isize)> {
        let mut range: Option<(isize, isize)> = None;
        for (start, len) in self.bands() {
            // SAFETY: both bands lie inside this allocation's host block.
            let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
            // whole aligned words of the pattern at once, the rest byte by byte
            let mut k = 0;
            while k < len {
                let addr = start + k;
                if addr % 4 == 0 && k + 4 <= len && bytes[k..k + 4] == GUARD {
                    k += 4;
                    continue;
                }
                if bytes[k] != GUARD[addr % 4] {
                    let off = addr as isize - self.user() as isize;
                    range = Some(range.map_or((off, off), |(lo, hi)| (lo.min(off), hi.max(off))));
                }
                k += 1;
            }
        }
        range
    }

    /// (start, length) of the leading and trailing guard bands.
    fn bands(&self) -> [(usize, usize); 2] {
        [
            (self.base, self.guard),
            (self.user() + self.size, self.guard),
        ]
    }

    fn fill_guards(&self) {
        for (start, len) in self.bands() {
            for addr in start..start + len {
                // SAFETY: inside this allocation's host block.
                unsafe { *(addr as *mut u8) = GUARD[addr % 4] };
            }
        }
    }
}

/// The order in which the threads of a block take turns (docs/KERNEL_BENCH.md). Each order is
/// deterministic; a kernel whose result depends on it has a race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Thread 0 first: a thread never sees what higher threads wrote since the last barrier.
    Forward,
    /// The last thread first: a thread never sees what lower threads wrote since the last barrier.
    Reverse,
}

impl Schedule {
    /// The schedule named by `ROBO_POET_EMU_SCHEDULE` (`forward`, the default, or `reverse`).
    pub fn from_env() -> Self {
        match std::env::var("ROBO_POET_EMU_SCHEDULE").as_deref() {
            Err(_) | Ok("") | Ok("forward") => Schedule::Forward,
            Ok("reverse") => Schedule::Reverse,
            Ok(other) => {
                panic!("ROBO_POET_EMU_SCHEDULE={other:?}: expected `forward` or `reverse`")
            }
        }
    }
}

/// One operation recorded during stream capture.
enum Node {
    /// A launch, its parameter values copied at capture (8-byte aligned storage per parameter);
    /// a cooperative one replays cooperatively, as a graph's cooperative kernel node does.
    Launch {
        kernel: EmuKernel,
        config: LaunchConfig,
        params: Vec<Vec<u64>>,
        cooperative: bool,
    },
    Memset {
        dst: DevicePtr,
        value: u8,
        bytes: usize,
    },
}

/// Stream capture in progress: what has been recorded, and the first operation it refused (which
/// invalidates the capture, as on the GPU).
#[derive(Default)]
struct Capture {
    nodes: Vec<Node>,
    invalidated: Option<String>,
}

/// An emulated CUDA device: kernels from kernels/*.cu (plus any extra tables, such as the test
/// kernels), run on the CPU. Every operation is serialised, as on one stream.
pub struct EmuDevice {
    kernels: HashMap<&'static str, EmuKernel>,
    schedule: Schedule,
    allocs: Mutex<BTreeMap<usize, Allocation>>,
    /// The memory this device pretends to have (allocations beyond it fail as out of memory).
    capacity: usize,
    counters: Counters,
    capture: Mutex<Option<Capture>>,
    graphs: Mutex<HashMap<u64, Vec<Node>>>,
    next_graph: std::sync::atomic::AtomicU64,
    /// Each kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute, where raised.
    max_dynamic_shared: Mutex<HashMap<&'static str, u32>>,
    /// SMs, for occupancy: [`EMU_SM_COUNT`] unless [`EmuDevice::with_sms`].
    sms: u32,
    /// Registers and static shared memory of kernels, as [`EmuDevice::with_kernel_resources`]
    /// declared them.
    declared: HashMap<&'static str, KernelResources>,
    /// The most static shared memory a block of each kernel without a ptxas report has used.
    measured_static_shared: Mutex<HashMap<&'static str, u32>>,
}

/// Default capacity of an emulated device: an H100's 80 GB.
pub const EMU_DEFAULT_CAPACITY: usize = 80 * 1000 * 1000 * 1000;

/// SMs of the emulated device: an H200's (/work/shared/docs/GPU.md).
pub const EMU_SM_COUNT: u32 = 132;

/// Registers per thread assumed for a kernel that NVRTC's ptxas report does not cover (the test
/// kernels, or every kernel of a build without NVRTC): the kernels' typical count (most of
/// kernels/*.cu use 16 to 40), and the most at which 2048 threads fit on an SM.
pub const ASSUMED_REGISTERS: u32 = 32;

/// Where the emulated device took a kernel's registers and static shared memory from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceSource {
    /// [`EmuDevice::with_kernel_resources`].
    Declared,
    /// NVRTC's ptxas report compiled into the binary ([`super::nvrtc`]).
    Ptxas,
    /// No report: [`ASSUMED_REGISTERS`], and the static shared memory an earlier launch of the
    /// kernel on this device used (0 before any).
    Assumed,
}

impl std::fmt::Display for ResourceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResourceSource::Declared => "declared with EmuDevice::with_kernel_resources",
            ResourceSource::Ptxas => "from NVRTC's ptxas report",
            ResourceSource::Assumed => {
                "assumed: no ptxas report covers this kernel, so 32 registers per thread and the \
                 static shared memory of its earlier launches on this device (0 before any)"
            }
        })
    }
}

/// Registers and static shared memory of every kernel in the embedded ptxas report.
fn ptxas_resources() -> &'static HashMap<String, KernelResources> {
    static MAP: std::sync::OnceLock<HashMap<String, KernelResources>> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        super::nvrtc::kernel_usage()
            .into_iter()
            .map(|(_, k)| {
                let r = KernelResources {
                    registers: k.registers,
                    static_shared_bytes: u32::try_from(k.shared_bytes).unwrap_or(u32::MAX),
                };
                (k.name, r)
            })
            .collect()
    })
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuDevice {
    /// A device with the project's kernels, scheduling threads as `ROBO_POET_EMU_SCHEDULE` says.
    pub fn new() -> Self {
        EmuDevice {
            kernels: HashMap::new(),
            schedule: Schedule::from_env(),
            allocs: Mutex::new(BTreeMap::new()),
            capacity: EMU_DEFAULT_CAPACITY,
            counters: Counters::default(),
            capture: Mutex::new(None),
            graphs: Mutex::new(HashMap::new()),
            next_graph: std::sync::atomic::AtomicU64::new(1),
            max_dynamic_shared: Mutex::new(HashMap::new()),
            sms: EMU_SM_COUNT,
            declared: HashMap::new(),
            measured_static_shared: Mutex::new(HashMap::new()),
        }
        .with_kernels(KERNELS)
    }

    /// A device of `sms` SMs instead of an H200's 132 (each SM as compute capability 9.0), so that
    /// a test reaches the co-residency limit of a cooperative launch with a small grid.
    pub fn with_sms(mut self, sms: u32) -> Self {
        assert!(sms > 0, "an emulated device needs at least one SM");
        self.sms = sms;
        self
    }

    /// Declares `kernel`'s registers per thread and static shared memory per block for occupancy,
    /// in place of the ptxas report or the assumption ([`ResourceSource`]). Panics if the device
    /// has no such kernel (add its table first).
    pub fn with_kernel_resources(mut self, kernel: &str, resources: KernelResources) -> Self {
        let k = self
            .kernels
            .get(kernel)
            .unwrap_or_else(|| panic!("with_kernel_resources: no kernel named {kernel}"));
        self.declared.insert(k.name, resources);
        self
    }

    /// The registers and static shared memory occupancy uses for `k`, and where they come from.
    pub fn kernel_resources(
        &self,
        kernel: &str,
    ) -> Result<(KernelResources, ResourceSource), GpuError> {
        let k = self.kernel(kernel)?;
        if let Some(r) = self.declared.get(k.name) {
            return Ok((*r, ResourceSource::Declared));
        }
        if let Some(r) = ptxas_resources().get(k.name) {
            return Ok((*r, ResourceSource::Ptxas));
        }
        let measured = self
            .measured_static_shared
            .lock()
            .unwrap()
            .get(k.name)
            .copied()
            .unwrap_or(0);
        let r = KernelResources {
            registers: ASSUMED_REGISTERS,
            static_shared_bytes: measured,
        };
        Ok((r, ResourceSource::Assumed))
    }

    /// Occupancy of `k` at `block_threads` threads and `dynamic_shared` bytes per block, with the
    /// kernel's resources as [`EmuDevice::kernel_resources`] finds them, or `static_shared` instead
    /// of its static shared memory.
    fn occupancy_of(
        &self,
        k: &EmuKernel,
        block_threads: u32,
        dynamic_shared: u32,
        static_shared: Option<u32>,
    ) -> Result<(Occupancy, KernelResources, ResourceSource), GpuError> {
        let (mut r, source) = self.kernel_resources(k.name)?;
        if let Some(s) = static_shared {
            r.static_shared_bytes = s;
        }
        let attr = self.max_dynamic_shared.lock().unwrap().get(k.name).copied();
        Ok((
            occupancy(&SM_90, r, block_threads, dynamic_shared, attr),
            r,
            source,
        ))
    }

    /// The driver's check of a cooperative launch: every block of the grid must fit on the
    /// device at once (CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE otherwise).
    fn check_co_residency(
        &self,
        k: &EmuKernel,
        config: &LaunchConfig,
        static_shared: Option<u32>,
    ) -> Result<(), GpuError> {
        let threads = config.block.volume() as u32;
        let (occ, r, source) = self.occupancy_of(k, threads, config.shared_bytes, static_shared)?;
        let limit = occ.blocks as u64 * self.sms as u64;
        let blocks = config.grid.volume();
        if blocks <= limit {
            return Ok(());
        }
        let measured = if static_shared.is_some() {
            " (the static shared memory as its blocks used it in this launch: no ptxas report \
             covers the kernel, so it was only known once it had run; declare it with \
             EmuDevice::with_kernel_resources)"
        } else {
            ""
        };
        Err(GpuError::InvalidLaunch {
            kernel: k.name.to_string(),
            config: *config,
            reason: format!(
                "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE: the {blocks} blocks of a cooperative grid must all be \
                 resident at once, and at most {limit} blocks of {threads} threads can be: {occ} × {} SMs \
                 ({} registers per thread and {} B of static shared memory, {source}{measured}); size the grid \
                 with max_active_blocks_per_sm × sm_count",
                self.sms, r.registers, r.static_shared_bytes
            ),
        })
    }

    /// The kernel named `kernel`: the emulated cuModuleGetFunction.
    fn kernel(&self, kernel: &str) -> Result<&EmuKernel, GpuError> {
        self.kernels
            .get(kernel)
            .ok_or_else(|| GpuError::UnknownKernel {
                kernel: kernel.to_string(),
                available: self.kernel_names().iter().map(|s| s.to_string()).collect(),
            })
    }

    /// Sets the device memory this device reports and enforces, in bytes (allocations are
    /// counted rounded up to 256 bytes, as the driver's alignment).
    pub fn with_capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// Bytes allocated and not freed, each allocation rounded up to 256.
    fn used(allocs: &BTreeMap<usize, Allocation>) -> usize {
        allocs
            .values()
            .map(|a| a.size.next_multiple_of(ALIGN))
            .sum()
    }

    /// Sets the order in which the threads of a block take turns.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Adds a table of kernels (build.rs generates one per kernel folder).
    pub fn with_kernels(mut self, table: &[EmuKernel]) -> Self {
        for k in table {
            if let Some(old) = self.kernels.insert(k.name, *k) {
                panic!(
                    "kernel {} is defined in both {} and {}",
                    k.name, old.source, k.source
                );
            }
        }
        self
    }

    /// Names of the kernels this device can launch, sorted.
    pub fn kernel_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.kernels.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Number of allocations not yet freed.
    pub fn live_allocations(&self) -> usize {
        self.allocs.lock().unwrap().len()
    }

    /// Host address of `bytes` bytes at `ptr`, if they lie inside one live allocation.
    fn resolve(
        allocs: &BTreeMap<usize, Allocation>,
        op: &'static str,
        ptr: DevicePtr,
        bytes: usize,
    ) -> Result<*mut u8, GpuError> {
        let addr = ptr as usize;
        let bad = |reason: String| Err(GpuError::InvalidMemory { op, reason });
        let Some((&user, a)) = allocs.range(..=addr).next_back() else {
            return bad(format!(
                "{bytes} bytes at {ptr:#x}: no live allocation there"
            ));
        };
        if addr
            .checked_add(bytes)
            .is_none_or(|end| end > user + a.size)
        {
            return bad(format!(
                "{bytes} bytes at {ptr:#x} run past the end of the allocation at {user:#x} ({} bytes) \
                 or lie outside every live allocation",
                a.size
            ));
        }
        Ok(addr as *mut u8)
    }

    /// Refuses `op` while a stream capture is in progress, as the driver does
    /// (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED), and invalidates the capture.
    fn not_while_capturing(&self, op: &'static str) -> Result<(), GpuError> {
        let mut cap = self.capture.lock().unwrap();
        if let Some(c) = cap.as_mut() {
            let reason = format!(
                "{op} is not permitted while the stream is being captured into a graph (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); the capture is now invalid"
            );
            c.invalidated.get_or_insert_with(|| reason.clone());
            return Err(GpuError::Unsupported {
                op: op.to_string(),
                reason,
            });
        }
        Ok(())
    }

    /// The kernel's parameter sizes, from its launcher.
    fn param_sizes(k: &EmuKernel) -> Result<Vec<u64>, String> {
        let mut sizes = vec![0u64; 64];
        let mut desc = EmuLaunchDesc {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_bytes: 0,
            params: std::ptr::null_mut(),
            num_params: 0,
            error: std::ptr::null_mut(),
            error_cap: 0,
            reverse: 0,
            query_params: 1,
            param_sizes: sizes.as_mut_ptr(),
            param_sizes_cap: sizes.len() as u64,
            shared_limit: 0,
            cooperative: 0,
            static_shared_used: 0,
        };
        // SAFETY: in query mode the launcher only writes num_params and param_sizes[..cap].
        let rc = unsafe { (k.launch)(&mut desc) };
        if rc != LAUNCH_OK || desc.num_params as usize > sizes.len() {
            return Err(format!("could not read the parameter list of {}", k.name));
        }
        sizes.truncate(desc.num_params as usize);
        Ok(sizes)
    }

    /// Runs one launch of `k` (eager or replayed); `cooperative`: with every block resident at
    /// once (the caller has checked that they fit).
    ///
    /// # Safety
    ///
    /// As [`Device::launch`].
    unsafe fn run_launch(
        &self,
        k: &EmuKernel,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
        cooperative: bool,
    ) -> Result<(), GpuError> {
        let kernel = k.name;
        let rejected = |reason: String| GpuError::InvalidLaunch {
            kernel: kernel.to_string(),
            config: *config,
            reason,
        };
        let opted = self.max_dynamic_shared.lock().unwrap().get(k.name).copied();
        // Held for the whole launch: memory cannot be freed or copied while a kernel runs.
        let allocs = self.allocs.lock().unwrap();
        let mut error = vec![0u8; 16 * 1024];
        let mut desc = EmuLaunchDesc {
            grid: [config.grid.x, config.grid.y, config.grid.z],
            block: [config.block.x, config.block.y, config.block.z],
            shared_bytes: config.shared_bytes as u64,
            params: params.as_mut_ptr(),
            num_params: params.len() as u64,
            error: error.as_mut_ptr() as *mut c_char,
            error_cap: error.len() as u64,
            reverse: (self.schedule == Schedule::Reverse) as u32,
            query_params: 0,
            param_sizes: std::ptr::null_mut(),
            param_sizes_cap: 0,
            shared_limit: if opted.is_some() {
                SHARED_OPTIN_SM90 as u64
            } else {
                DEFAULT_SHARED_BYTES as u64
            },
            cooperative: cooperative as u32,
            static_shared_used: 0,
        };
        // SAFETY: the descriptor is valid for the call; the caller vouches for the parameters.
        let rc = unsafe { (k.launch)(&mut desc) };
        let guards = Self::check_guards(&allocs);
        drop(allocs);
        let failed = |report: String| GpuError::KernelFailed {
            kernel: kernel.to_string(),
            config: *config,
            report,
        };
        match rc {
            LAUNCH_OK => {
                if let Some(g) = guards {
                    return Err(failed(format!("{g} (source: {})", k.source)));
                }
                self.note_static_shared(k, config, desc.static_shared_used, cooperative)
            }
            code => {
                let msg = CStr::from_bytes_until_nul(&error).map_or_else(
                    |_| "(no message)".into(),
                    |c| c.to_string_lossy().into_owned(),
                );
                Err(if code == LAUNCH_REJECTED {
                    rejected(msg)
                } else {
                    failed(msg)
                })
            }
        }
    }

    /// After a launch of a kernel that no ptxas report covers: keeps the static shared memory its
    /// blocks used for later occupancy queries, and fails a cooperative launch that was admitted
    /// with less than that when, with it, its grid could not have been resident (a GPU, which
    /// knows the static shared memory from ptxas, would have refused it).
    fn note_static_shared(
        &self,
        k: &EmuKernel,
        config: &LaunchConfig,
        used: u64,
        cooperative: bool,
    ) -> Result<(), GpuError> {
        if self.kernel_resources(k.name)?.1 != ResourceSource::Assumed {
            return Ok(());
        }
        let used = u32::try_from(used).unwrap_or(u32::MAX);
        let grew = {
            let mut measured = self.measured_static_shared.lock().unwrap();
            let m = measured.entry(k.name).or_insert(0);
            let grew = used > *m;
            *m = (*m).max(used);
            grew
        };
        if cooperative && grew {
            self.check_co_residency(k, config, Some(used))?;
        }
        Ok(())
    }

    fn do_memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), GpuError> {
        let allocs = self.allocs.lock().unwrap();
        let d = Self::resolve(&allocs, "memset_d8", dst, bytes)?;
        // SAFETY: inside a live allocation.
        unsafe { std::ptr::write_bytes(d, value, bytes) };
        Ok(())
    }

    /// Checks every guard band after a launch; restores damaged ones.
    fn check_guards(allocs: &BTreeMap<usize, Allocation>) -> Option<String> {
        let mut report = Vec::new();
        for a in allocs.values() {
            if let Some((lo, hi)) = a.damaged_guard() {
                let side = if lo < 0 {
                    "before the start"
                } else {
                    "past the end"
                };
                report.push(format!(
                    "wrote {side} of the allocation at {:#x} ({} bytes): bytes {lo}..={hi} relative to its start changed",
                    a.user(),
                    a.size
                ));
                a.fill_guards();
            }
        }
        if report.is_empty() {
            None
        } else {
            Some(report.join("; "))
        }
    }
}

impl Drop for EmuDevice {
    fn drop(&mut self) {
        for (_, a) in std::mem::take(&mut *self.allocs.lock().unwrap()) {
            // SAFETY: allocated in `alloc` with this layout and not freed since.
            unsafe { alloc::dealloc(a.base as *mut u8, a.layout) };
        }
    }
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        match SANITIZER {
            Some(s) => format!("emulated CUDA device (CPU, {s} sanitizer)"),
            None => "emulated CUDA device (CPU)".into(),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError> {
        self.not_while_capturing("alloc")?;
        if bytes == 0 {
            return Err(GpuError::InvalidMemory {
                op: "alloc",
                reason: "cannot allocate 0 bytes".into(),
            });
        }
        let guard = if SANITIZER == Some("address") {
            0
        } else {
            bytes.next_multiple_of(ALIGN).clamp(GUARD_MIN, GUARD_MAX)
        };
        if Self::used(&self.allocs.lock().unwrap()).saturating_add(bytes.next_multiple_of(ALIGN))
            > self.capacity
        {
            return Err(GpuError::OutOfMemory { bytes });
        }
        let total = bytes
            .checked_add(2 * guard)
            .ok_or(GpuError::OutOfMemory { bytes })?;
        let layout =
            Layout::from_size_align(total, ALIGN).map_err(|_| GpuError::OutOfMemory { bytes })?;
        // SAFETY: layout has a non-zero size.
        let base = unsafe { alloc::alloc(layout) };
        if base.is_null() {
            return Err(GpuError::OutOfMemory { bytes });
        }
        let a = Allocation {
            base: base as usize,
            layout,
            size: bytes,
            guard,
        };
        a.fill_guards();
        // SAFETY: the user range lies inside the block just allocated.
        unsafe { std::ptr::write_bytes((a.user()) as *mut u8, POISON, bytes) };
        let user = a.user();
        self.allocs.lock().unwrap().insert(user, a);
        Ok(user as DevicePtr)
    }

    fn mem_get_info(&self) -> Result<(usize, usize), GpuError> {
        let used = Self::used(&self.allocs.lock().unwrap());
        Ok((self.capacity.saturating_sub(used), self.capacity))
    }

    fn free(&self, ptr: DevicePtr) -> Result<(), GpuError> {
        self.not_while_capturing("free")?;
        let a = self
            .allocs
            .lock()
            .unwrap()
            .remove(&(ptr as usize))
            .ok_or_else(|| GpuError::InvalidMemory {
                op: "free",
                reason: format!("{ptr:#x} is not the start of a live allocation"),
            })?;
        // SAFETY: allocated in `alloc` with this layout; removed from the table, so freed once.
        unsafe { alloc::dealloc(a.base as *mut u8, a.layout) };
        Ok(())
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        self.not_while_capturing("copy_htod")?;
        if src.is_empty() {
            return Ok(());
        }
        self.counters.count(Counted::HtoD(src.len()));
        self.counters.count(Counted::HostSync);
        let allocs = self.allocs.lock().unwrap();
        let d = Self::resolve(&allocs, "copy_htod", dst, src.len())?;
        // SAFETY: `d` addresses src.len() bytes of one live allocation, which no Rust reference
        // covers; host memory and device memory never overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), d, src.len()) };
        Ok(())
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<(), GpuError> {
        self.not_while_capturing("copy_dtoh")?;
        if dst.is_empty() {
            return Ok(());
        }
        self.counters.count(Counted::DtoH(dst.len()));
        self.counters.count(Counted::HostSync);
        let allocs = self.allocs.lock().unwrap();
        let s = Self::resolve(&allocs, "copy_dtoh", src, dst.len())?;
        // SAFETY: as in copy_htod.
        unsafe { std::ptr::copy_nonoverlapping(s, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError> {
        self.not_while_capturing("copy_dtod")?;
        if bytes == 0 {
            return Ok(());
        }
        self.counters.count(Counted::DtoD(bytes));
        self.counters.count(Counted::HostSync);
        let allocs = self.allocs.lock().unwrap();
        let d = Self::resolve(&allocs, "copy_dtod", dst, bytes)?;
        let s = Self::resolve(&allocs, "copy_dtod", src, bytes)?;
        if (d as usize) < s as usize + bytes && (s as usize) < d as usize + bytes {
            return Err(GpuError::InvalidMemory {
                op: "copy_dtod",
                reason: format!("source {src:#x} and destination {dst:#x} ({bytes} bytes) overlap"),
            });
        }
        // SAFETY: both ranges are inside live allocations and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(s, d, bytes) };
        Ok(())
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), GpuError> {
        if bytes == 0 {
            return Ok(());
        }
        {
            let mut cap = self.capture.lock().unwrap();
            if let Some(c) = cap.as_mut() {
                // checked now, as the driver checks a memset node's range at capture
                Self::resolve(&self.allocs.lock().unwrap(), "memset_d8", dst, bytes)?;
                c.nodes.push(Node::Memset { dst, value, bytes });
                return Ok(());
            }
        }
        self.counters.count(Counted::Memset);
        self.do_memset(dst, value, bytes)
    }

    fn upload_async(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        // The staging copy would be read when the graph runs, not now: refused in capture.
        self.not_while_capturing("upload_async")?;
        if src.is_empty() {
            return Ok(());
        }
        self.counters.count(Counted::HtoD(src.len()));
        let allocs = self.allocs.lock().unwrap();
        let d = Self::resolve(&allocs, "upload_async", dst, src.len())?;
        // SAFETY: as in copy_htod. The copy runs now, which is when the staged data would be
        // read on a GPU too (the device's staging copy is taken at the call).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), d, src.len()) };
        Ok(())
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.not_while_capturing("synchronize")?;
        self.counters.count(Counted::HostSync);
        Ok(()) // every launch has already run to completion
    }

    fn counts(&self) -> DeviceCounts {
        self.counters.snapshot()
    }

    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), GpuError> {
        let Some(k) = self.kernels.get(kernel) else {
            return Err(GpuError::UnknownKernel {
                kernel: kernel.to_string(),
                available: self.kernel_names().iter().map(|s| s.to_string()).collect(),
            });
        };
        if bytes > SHARED_OPTIN_SM90 {
            return Err(GpuError::Driver {
                op: format!("cuFuncSetAttribute({kernel}, MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes})"),
                message: format!(
                    "CUDA_ERROR_INVALID_VALUE: above the device's opt-in maximum of {SHARED_OPTIN_SM90} bytes per block"
                ),
            });
        }
        self.max_dynamic_shared
            .lock()
            .unwrap()
            .insert(k.name, bytes);
        Ok(())
    }

    fn max_shared_optin(&self) -> u32 {
        SHARED_OPTIN_SM90
    }

    fn begin_capture(&self) -> Result<(), GpuError> {
        let mut cap = self.capture.lock().unwrap();
        if cap.is_some() {
            return Err(GpuError::Unsupported {
                op: "begin_capture".into(),
                reason: "the stream is already being captured".into(),
            });
        }
        *cap = Some(Capture::default());
        Ok(())
    }

    fn end_capture(&self) -> Result<GraphId, GpuError> {
        let c = self
            .capture
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| GpuError::Unsupported {
                op: "end_capture".into(),
                reason: "no capture in progress".into(),
            })?;
        if let Some(why) = c.invalidated {
            return Err(GpuError::Unsupported {
                op: "end_capture".into(),
                reason: format!(
                    "the capture was invalidated (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED): {why}"
                ),
            });
        }
        let id = self
            .next_graph
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.graphs.lock().unwrap().insert(id, c.nodes);
        Ok(GraphId(id))
    }

    fn launch_graph(&self, graph: GraphId) -> Result<(), GpuError> {
        self.not_while_capturing("launch_graph")?;
        let graphs = self.graphs.lock().unwrap();
        let nodes = graphs.get(&graph.0).ok_or_else(|| GpuError::Unsupported {
            op: "launch_graph".into(),
            reason: format!("no graph {}", graph.0),
        })?;
        self.counters.count(Counted::GraphLaunch);
        for node in nodes {
            match node {
                Node::Launch {
                    kernel,
                    config,
                    params,
                    cooperative,
                } => {
                    let mut storage = params.clone();
                    let mut ptrs: Vec<*mut c_void> = storage
                        .iter_mut()
                        .map(|p| p.as_mut_ptr() as *mut c_void)
                        .collect();
                    // SAFETY: the parameter values recorded at capture, each in its own
                    // storage of at least its size; the capture's caller vouched for them.
                    unsafe { self.run_launch(kernel, config, &mut ptrs, *cooperative)? };
                }
                Node::Memset { dst, value, bytes } => self.do_memset(*dst, *value, *bytes)?,
            }
        }
        Ok(())
    }

    fn destroy_graph(&self, graph: GraphId) -> Result<(), GpuError> {
        self.graphs.lock().unwrap().remove(&graph.0);
        Ok(())
    }

    unsafe fn launch(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        // SAFETY: the caller upholds the trait's contract.
        unsafe { self.submit(kernel, config, params, false) }
    }

    unsafe fn launch_cooperative(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        // SAFETY: the caller upholds the trait's contract.
        unsafe { self.submit(kernel, config, params, true) }
    }

    fn max_active_blocks_per_sm(
        &self,
        kernel: &str,
        block_threads: u32,
        dynamic_shared: u32,
    ) -> Result<u32, GpuError> {
        let k = self.kernel(kernel)?;
        Ok(self
            .occupancy_of(k, block_threads, dynamic_shared, None)?
            .0
            .blocks)
    }

    fn sm_count(&self) -> u32 {
        self.sms
    }
}

impl EmuDevice {
    /// A launch as the driver takes it: checked, then recorded during stream capture or run.
    ///
    /// # Safety
    ///
    /// As [`Device::launch`].
    unsafe fn submit(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
        cooperative: bool,
    ) -> Result<(), GpuError> {
        let rejected = |reason: String| GpuError::InvalidLaunch {
            kernel: kernel.to_string(),
            config: *config,
            reason,
        };
        let k = self.kernel(kernel)?;
        config.validate().map_err(rejected)?;
        // As the driver: dynamic shared memory up to the kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES
        // (48 KiB unless raised); static + dynamic is checked per block by the runtime.
        let max = self
            .max_dynamic_shared
            .lock()
            .unwrap()
            .get(k.name)
            .copied()
            .unwrap_or(DEFAULT_SHARED_BYTES);
        if config.shared_bytes > max {
            return Err(rejected(format!(
                "{} bytes of dynamic shared memory exceed the kernel's maximum of {max} (CUDA_ERROR_INVALID_VALUE); \
                 above {DEFAULT_SHARED_BYTES} a kernel must opt in with cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), up to {SHARED_OPTIN_SM90}",
                config.shared_bytes
            )));
        }
        if cooperative {
            self.check_co_residency(k, config, None)?;
        }
        let mut cap = self.capture.lock().unwrap();
        if let Some(c) = cap.as_mut() {
            // The driver copies the parameter values into the graph node now.
            let sizes = Self::param_sizes(k).map_err(rejected)?;
            if sizes.len() != params.len() {
                return Err(rejected(format!(
                    "the kernel takes {} parameters, the launch passed {}",
                    sizes.len(),
                    params.len()
                )));
            }
            let copied = params
                .iter()
                .zip(&sizes)
                .map(|(&p, &n)| {
                    let mut slot = vec![0u64; (n as usize).div_ceil(8).max(1)];
                    // SAFETY: the caller guarantees params[k] points at a value of the kernel's
                    // k-th parameter type, whose size the launcher reported.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            p as *const u8,
                            slot.as_mut_ptr() as *mut u8,
                            n as usize,
                        )
                    };
                    slot
                })
                .collect();
            c.nodes.push(Node::Launch {
                kernel: *k,
                config: *config,
                params: copied,
                cooperative,
            });
            self.counters.count(Counted::CapturedLaunch);
            return Ok(());
        }
        drop(cap);
        self.counters.count(Counted::Launch);
        // SAFETY: the caller upholds the trait's contract.
        unsafe { self.run_launch(k, config, params, cooperative) }
    }
}
