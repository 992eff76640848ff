//! The device interface the CUDA backend's host code is written against: device memory and
//! kernel launches, shaped like the CUDA driver API (`cuMemAlloc`, `cuMemcpyHtoD`,
//! `cuLaunchKernel`...) so that the cudarc implementation is a thin wrapper and the emulated one
//! ([`super::EmuDevice`]) behaves the same way to the host code.

use bytemuck::Pod;
use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

/// A device address, as the driver's `CUdeviceptr`. Offsets are plain byte arithmetic.
pub type DevicePtr = u64;

/// A GPU: device memory plus kernel launches, copies and memsets on one in-order stream of its
/// own.
///
/// Launches, memsets and [`Device::upload_async`] are queued and return at once; the blocking
/// calls ([`Device::copy_htod`], [`Device::copy_dtoh`], [`Device::copy_dtod`],
/// [`Device::synchronize`]) wait until everything queued before them has run, and are counted as
/// host synchronisations ([`DeviceCounts`]). On a real GPU a kernel fault can surface at a later
/// call, so host code must check every result. The emulator runs each operation to completion and
/// reports its faults from the call itself.
///
/// Between [`Device::begin_capture`] and [`Device::end_capture`] nothing runs: launches and
/// memsets are recorded into a graph (kernel parameters copied as they are at capture, as the
/// driver does), and the blocking calls, uploads, allocations and frees are refused, as the
/// driver refuses them in stream capture. [`Device::launch_graph`] replays a graph.
pub trait Device {
    /// What this device is, for messages.
    fn name(&self) -> String;

    /// `cuMemAlloc`: `bytes` (> 0) of device memory, 256-byte aligned. Its contents are
    /// undefined until written (the emulator fills them with NaN).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError>;

    /// `cuMemFree` of an address returned by [`Device::alloc`].
    fn free(&self, ptr: DevicePtr) -> Result<(), GpuError>;

    /// `cuMemcpyHtoD`: copies `src` to device memory at `dst`.
    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError>;

    /// `cuMemcpyDtoH`: fills `dst` from device memory at `src`.
    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<(), GpuError>;

    /// `cuMemcpyDtoD`: copies `bytes` between two device ranges (which must not overlap).
    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError>;

    /// `cuMemsetD8Async` on the device's stream: sets `bytes` bytes at `dst` to `value`.
    fn memset_d8(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), GpuError>;

    /// `cuMemcpyHtoDAsync` of `src` to `dst` on the device's stream, returning at once: the
    /// device first copies `src` into page-locked staging memory of its own (so `src` may change
    /// right after the call), and reuses that memory only once the copy has run.
    fn upload_async(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError>;

    /// Waits until everything queued has run; reports a fault of any of it.
    fn synchronize(&self) -> Result<(), GpuError>;

    /// What this device has done so far: launches, memsets, copies, host synchronisations.
    fn counts(&self) -> DeviceCounts;

    /// `cuFuncSetAttribute(kernel, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)`: lets
    /// `kernel`'s launches use up to `bytes` of dynamic shared memory (without it, a block gets
    /// 48 KiB in all); refused above [`Device::max_shared_optin`].
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), GpuError>;

    /// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`: the most shared memory a block
    /// can opt in to (227 KiB on compute capability 9.0).
    fn max_shared_optin(&self) -> u32;

    /// `cuStreamBeginCapture`: from now on launches and memsets are recorded, not run.
    fn begin_capture(&self) -> Result<(), GpuError> {
        Err(GpuError::Unsupported {
            op: "begin_capture".into(),
            reason: format!("{} cannot capture graphs", self.name()),
        })
    }

    /// `cuStreamEndCapture` + `cuGraphInstantiate`: ends the capture begun by
    /// [`Device::begin_capture`] and returns the recorded graph, ready to launch.
    fn end_capture(&self) -> Result<GraphId, GpuError> {
        Err(GpuError::Unsupported {
            op: "end_capture".into(),
            reason: format!("{} cannot capture graphs", self.name()),
        })
    }

    /// `cuGraphLaunch` of a graph from [`Device::end_capture`] on the device's stream.
    fn launch_graph(&self, _graph: GraphId) -> Result<(), GpuError> {
        Err(GpuError::Unsupported {
            op: "launch_graph".into(),
            reason: format!("{} cannot launch graphs", self.name()),
        })
    }

    /// `cuGraphExecDestroy`: frees a graph (after the launches of it already queued have run).
    fn destroy_graph(&self, _graph: GraphId) -> Result<(), GpuError> {
        Ok(())
    }

    /// `cuMemGetInfo`: (free, total) bytes of device memory.
    fn mem_get_info(&self) -> Result<(usize, usize), GpuError>;

    /// `cuLaunchKernel`: runs the kernel named `kernel` (its `extern "C"` name in kernels/*.cu)
    /// over `config.grid` blocks of `config.block` threads, with `config.shared_bytes` of dynamic
    /// shared memory. `params` is `kernelParams`: element k points at the value of parameter k.
    ///
    /// # Safety
    ///
    /// `params` must have one entry per kernel parameter, in order, each pointing at a value of
    /// exactly that parameter's type (a [`DevicePtr`] for a pointer parameter). Device pointers
    /// must address live allocations of this device that hold everything the kernel touches.
    unsafe fn launch(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError>;

    /// `cuLaunchCooperativeKernel`: as [`Device::launch`], with every block of the grid resident
    /// on the device at once, so the blocks can wait for each other (`grid_sync` of
    /// kernels/grid.cuh, which only such a launch may call). Refused (`InvalidLaunch`, naming
    /// CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE and the limit) when the grid has more blocks than
    /// [`Device::max_active_blocks_per_sm`] × [`Device::sm_count`]. Counted as a launch, and
    /// recorded as a (cooperative) kernel node during stream capture.
    ///
    /// # Safety
    ///
    /// As [`Device::launch`].
    unsafe fn launch_cooperative(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError>;

    /// `cuOccupancyMaxActiveBlocksPerMultiprocessor`: how many blocks of `kernel`, of
    /// `block_threads` threads and `dynamic_shared` bytes of dynamic shared memory each, one SM
    /// holds at once (0 if none fits), given the kernel's registers and static shared memory and
    /// its MAX_DYNAMIC_SHARED_SIZE_BYTES attribute ([`Device::set_max_dynamic_shared`]).
    fn max_active_blocks_per_sm(
        &self,
        kernel: &str,
        block_threads: u32,
        dynamic_shared: u32,
    ) -> Result<u32, GpuError>;

    /// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`: the device's SMs (132 on an H200).
    fn sm_count(&self) -> u32;

    /// Opens a named range on the profiler's timeline (NVTX on a GPU; nothing by default).
    fn range_push(&self, _name: &str) {}

    /// Closes the innermost range opened by [`Device::range_push`].
    fn range_pop(&self) {}

    /// `cuProfilerStart` (`on`) / `cuProfilerStop`: the window that `nsys --capture-range=cudaProfilerApi`
    /// and `ncu --profile-from-start off` record. Nothing by default.
    fn profiler_capture(&self, _on: bool) -> Result<(), GpuError> {
        Ok(())
    }
}

/// What can go wrong on a device. Every launch error names the kernel and its launch shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuError {
    /// No kernel of that name (`cuModuleGetFunction` failed).
    UnknownKernel {
        kernel: String,
        available: Vec<String>,
    },
    /// The launch was rejected before it ran (configuration or parameter list).
    InvalidLaunch {
        kernel: String,
        config: LaunchConfig,
        reason: String,
    },
    /// The kernel ran and failed (deadlock, write out of bounds, ...); `report` says where.
    KernelFailed {
        kernel: String,
        config: LaunchConfig,
        report: String,
    },
    /// A memory operation addressed memory outside every live allocation.
    InvalidMemory { op: &'static str, reason: String },
    /// The device could not provide `bytes` more bytes.
    OutOfMemory { bytes: usize },
    /// Any other driver error.
    Driver { op: String, message: String },
    /// The device does not offer this operation, or not now (e.g. a copy during stream capture).
    Unsupported { op: String, reason: String },
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::UnknownKernel { kernel, available } => write!(
                f,
                "no kernel named `{kernel}` (known kernels: {}); is it declared extern \"C\" __global__ in kernels/*.cu?",
                available.join(", ")
            ),
            GpuError::InvalidLaunch { kernel, config, reason } => {
                write!(f, "launch of kernel {kernel} with {config} rejected: {reason}")
            }
            GpuError::KernelFailed { kernel, config, report } => {
                write!(f, "kernel {kernel} launched with {config} failed: {report}")
            }
            GpuError::InvalidMemory { op, reason } => write!(f, "{op}: {reason}"),
            GpuError::OutOfMemory { bytes } => write!(f, "out of device memory allocating {bytes} bytes"),
            GpuError::Driver { op, message } => write!(f, "{op}: {message}"),
            GpuError::Unsupported { op, reason } => write!(f, "{op}: {reason}"),
        }
    }
}

impl std::error::Error for GpuError {}

/// Shared memory a block gets without `cuFuncSetAttribute`: 48 KiB, static and dynamic together.
pub const DEFAULT_SHARED_BYTES: u32 = 48 * 1024;
/// The opt-in maximum of compute capability 9.0 (the CUDA programming guide's table): 227 KiB.
pub const SHARED_OPTIN_SM90: u32 = 227 * 1024;

/// A graph recorded by [`Device::begin_capture`] / [`Device::end_capture`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub u64);

/// Operations a device has been asked to do, counted from its creation. Counts are exact, so
/// tests assert budgets on them (the difference of two snapshots is one training step's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCounts {
    /// Kernel launches run eagerly, cooperative ones included (a launch recorded in a graph is
    /// not counted here).
    pub launches: u64,
    /// Launches recorded into graphs during capture.
    pub captured_launches: u64,
    /// Graph launches.
    pub graph_launches: u64,
    /// Memsets issued eagerly (recorded ones are not counted).
    pub memsets: u64,
    /// Host-to-device copies (blocking or async) and their bytes.
    pub htod: u64,
    pub htod_bytes: u64,
    /// Device-to-host copies and their bytes (every one waits for the device).
    pub dtoh: u64,
    pub dtoh_bytes: u64,
    /// Device-to-device copies and their bytes.
    pub dtod: u64,
    pub dtod_bytes: u64,
    /// Calls that waited for the device to drain its queue: blocking copies, synchronize, and
    /// a staging buffer that had to wait for the copy still reading it.
    pub host_syncs: u64,
}

impl DeviceCounts {
    /// Copies in either direction.
    pub fn copies(&self) -> u64 {
        self.htod + self.dtoh + self.dtod
    }
}

impl std::ops::Sub for DeviceCounts {
    type Output = DeviceCounts;
    fn sub(self, o: DeviceCounts) -> DeviceCounts {
        DeviceCounts {
            launches: self.launches - o.launches,
            captured_launches: self.captured_launches - o.captured_launches,
            graph_launches: self.graph_launches - o.graph_launches,
            memsets: self.memsets - o.memsets,
            htod: self.htod - o.htod,
            htod_bytes: self.htod_bytes - o.htod_bytes,
            dtoh: self.dtoh - o.dtoh,
            dtoh_bytes: self.dtoh_bytes - o.dtoh_bytes,
            dtod: self.dtod - o.dtod,
            dtod_bytes: self.dtod_bytes - o.dtod_bytes,
            host_syncs: self.host_syncs - o.host_syncs,
        }
    }
}

impl fmt::Display for DeviceCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} launches, {} graph launches, {} memsets, {} copies (host→device {} / {} B, device→host {} / {} B, device→device {} / {} B), {} host syncs",
            self.launches,
            self.graph_launches,
            self.memsets,
            self.copies(),
            self.htod,
            self.htod_bytes,
            self.dtoh,
            self.dtoh_bytes,
            self.dtod,
            self.dtod_bytes,
            self.host_syncs
        )
    }
}

/// Thread-safe counters behind [`Device::counts`], shared by the device implementations.
#[derive(Debug, Default)]
pub struct Counters {
    launches: std::sync::atomic::AtomicU64,
    captured_launches: std::sync::atomic::AtomicU64,
    graph_launches: std::sync::atomic::AtomicU64,
    memsets: std::sync::atomic::AtomicU64,
    htod: std::sync::atomic::AtomicU64,
    htod_bytes: std::sync::atomic::AtomicU64,
    dtoh: std::sync::atomic::AtomicU64,
    dtoh_bytes: std::sync::atomic::AtomicU64,
    dtod: std::sync::atomic::AtomicU64,
    dtod_bytes: std::sync::atomic::AtomicU64,
    host_syncs: std::sync::atomic::AtomicU64,
}

/// What [`Counters::count`] records.
#[derive(Clone, Copy, Debug)]
pub enum Counted {
    Launch,
    CapturedLaunch,
    GraphLaunch,
    Memset,
    HtoD(usize),
    DtoH(usize),
    DtoD(usize),
    HostSync,
}

impl Counters {
    pub fn count(&self, what: Counted) {
        use std::sync::atomic::Ordering::Relaxed;
        let add = |c: &std::sync::atomic::AtomicU64, n: u64| {
            c.fetch_add(n, Relaxed);
        };
        match what {
            Counted::Launch => add(&self.launches, 1),
            Counted::CapturedLaunch => add(&self.captured_launches, 1),
            Counted::GraphLaunch => add(&self.graph_launches, 1),
            Counted::Memset => add(&self.memsets, 1),
            Counted::HtoD(b) => {
                add(&self.htod, 1);
                add(&self.htod_bytes, b as u64)
            }
            Counted::DtoH(b) => {
                add(&self.dtoh, 1);
                add(&self.dtoh_bytes, b as u64)
            }
            Counted::DtoD(b) => {
                add(&self.dtod, 1);
                add(&self.dtod_bytes, b as u64)
            }
            Counted::HostSync => add(&self.host_syncs, 1),
        }
    }

    pub fn snapshot(&self) -> DeviceCounts {
        use std::sync::atomic::Ordering::Relaxed;
        DeviceCounts {
            launches: self.launches.load(Relaxed),
            captured_launches: self.captured_launches.load(Relaxed),
            graph_launches: self.graph_launches.load(Relaxed),
            memsets: self.memsets.load(Relaxed),
            htod: self.htod.load(Relaxed),
            htod_bytes: self.htod_bytes.load(Relaxed),
            dtoh: self.dtoh.load(Relaxed),
            dtoh_bytes: self.dtoh_bytes.load(Relaxed),
            dtod: self.dtod.load(Relaxed),
            dtod_bytes: self.dtod_bytes.load(Relaxed),
            host_syncs: self.host_syncs.load(Relaxed),
        }
    }
}

/// A grid or block extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn new(x: u32, y: u32, z: u32) -> Self {
        Dim3 { x, y, z }
    }

    pub fn volume(&self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

impl From<u32> for Dim3 {
    fn from(x: u32) -> Self {
        Dim3::new(x, 1, 1)
    }
}

impl From<(u32, u32)> for Dim3 {
    fn from((x, y): (u32, u32)) -> Self {
        Dim3::new(x, y, 1)
    }
}

impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Dim3::new(x, y, z)
    }
}

impl fmt::Display for Dim3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}, {})", self.x, self.y, self.z)
    }
}

/// The launch shape of `cuLaunchKernel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: Dim3,
    pub block: Dim3,
    /// Dynamic shared memory per block (`extern __shared__`), in bytes.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    pub fn new(grid: impl Into<Dim3>, block: impl Into<Dim3>) -> Self {
        LaunchConfig {
            grid: grid.into(),
            block: block.into(),
            shared_bytes: 0,
        }
    }

    pub fn with_shared_bytes(self, shared_bytes: u32) -> Self {
        LaunchConfig {
            shared_bytes,
            ..self
        }
    }

    /// CUDA's limits on a launch shape (compute capability 7.0 and later).
    pub fn validate(&self) -> Result<(), String> {
        let (g, b) = (self.grid, self.block);
        if g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0 {
            return Err("grid and block extents must all be at least 1".into());
        }
        if b.volume() > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64 {
            return Err(format!(
                "block {b} exceeds 1024 threads or the per-axis limits (1024, 1024, 64)"
            ));
        }
        if g.x > i32::MAX as u32 || g.y > 65535 || g.z > 65535 {
            return Err(format!(
                "grid {g} exceeds the limits (2^31 - 1, 65535, 65535)"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for LaunchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grid {}, block {}, {} B dynamic shared memory",
            self.grid, self.block, self.shared_bytes
        )
    }
}

/// A typed view of device memory: address and element count. It does not own the memory.
pub struct DeviceSlice<T> {
    ptr: DevicePtr,
    len: usize,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Clone for DeviceSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DeviceSlice<T> {}

impl<T> fmt::Debug for DeviceSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceSlice<{}>({:#x}, {})",
            std::any::type_name::<T>(),
            self.ptr,
            self.len
        )
    }
}

impl<T> PartialEq for DeviceSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr && self.len == other.len
    }
}

impl<T> DeviceSlice<T> {
    pub fn new(ptr: DevicePtr, len: usize) -> Self {
        DeviceSlice {
            ptr,
            len,
            _elem: PhantomData,
        }
    }

    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Elements `range` of this slice. Panics if the range is out of bounds.
    pub fn slice(&self, range: Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "device slice range {range:?} out of bounds for length {}",
            self.len
        );
        DeviceSlice::new(
            self.ptr + (range.start * std::mem::size_of::<T>()) as u64,
            range.len(),
        )
    }
}

/// Typed conveniences over any [`Device`].
pub trait DeviceExt: Device {
    /// `len` elements of uninitialised device memory.
    fn alloc_slice<T: Pod>(&self, len: usize) -> Result<DeviceSlice<T>, GpuError> {
        Ok(DeviceSlice::new(
            self.alloc(len * std::mem::size_of::<T>())?,
            len,
        ))
    }

    /// A new allocation holding `data`.
    fn upload<T: Pod>(&self, data: &[T]) -> Result<DeviceSlice<T>, GpuError> {
        let s = self.alloc_slice(data.len())?;
        self.copy_htod(s.ptr(), bytemuck::cast_slice(data))?;
        Ok(s)
    }

    /// Copies `data` into `dst`, which must have the same length.
    fn write<T: Pod>(&self, dst: DeviceSlice<T>, data: &[T]) -> Result<(), GpuError> {
        if dst.len() != data.len() {
            return Err(GpuError::InvalidMemory {
                op: "write",
                reason: format!(
                    "device slice has {} elements, host data {}",
                    dst.len(),
                    data.len()
                ),
            });
        }
        self.copy_htod(dst.ptr(), bytemuck::cast_slice(data))
    }

    /// The contents of `src`.
    fn download<T: Pod>(&self, src: DeviceSlice<T>) -> Result<Vec<T>, GpuError> {
        let mut v = vec![T::zeroed(); src.len()];
        self.copy_dtoh(bytemuck::cast_slice_mut(&mut v), src.ptr())?;
        Ok(v)
    }

    /// Sets every byte of `dst` to zero (0.0 for floats).
    fn zero<T>(&self, dst: DeviceSlice<T>) -> Result<(), GpuError> {
        self.memset_d8(dst.ptr(), 0, dst.bytes())
    }

    /// Frees the allocation `s` starts.
    fn free_slice<T>(&self, s: DeviceSlice<T>) -> Result<(), GpuError> {
        self.free(s.ptr())
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}

/// Owned storage for a kernel's parameter values, and the `kernelParams` array pointing at them.
///
/// Each value sits in its own 8-byte slot, so every parameter is naturally aligned, as
/// `cuLaunchKernel` reads it.
#[derive(Debug, Default)]
pub struct KernelArgs {
    slots: Vec<u64>,
}

impl KernelArgs {
    pub fn new() -> Self {
        KernelArgs::default()
    }

    fn push_bytes(mut self, bytes: &[u8]) -> Self {
        let mut slot = [0u8; 8];
        slot[..bytes.len()].copy_from_slice(bytes);
        self.slots.push(u64::from_ne_bytes(slot));
        self
    }

    /// A pointer parameter (`float*`, `const int*`, ...).
    pub fn ptr(self, p: DevicePtr) -> Self {
        self.push_bytes(&p.to_ne_bytes())
    }

    /// A pointer parameter from a slice.
    pub fn slice<T>(self, s: DeviceSlice<T>) -> Self {
        self.ptr(s.ptr())
    }

    /// A pointer parameter that may be null.
    pub fn opt_slice<T>(self, s: Option<DeviceSlice<T>>) -> Self {
        self.ptr(s.map_or(0, |s| s.ptr()))
    }

    /// An `int` parameter.
    pub fn i32(self, v: i32) -> Self {
        self.push_bytes(&v.to_ne_bytes())
    }

    /// An `unsigned int` parameter.
    pub fn u32(self, v: u32) -> Self {
        self.push_bytes(&v.to_ne_bytes())
    }

    /// An `unsigned long long` parameter.
    pub fn u64(self, v: u64) -> Self {
        self.push_bytes(&v.to_ne_bytes())
    }

    /// A `float` parameter.
    pub fn f32(self, v: f32) -> Self {
        self.push_bytes(&v.to_ne_bytes())
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The `kernelParams` array for [`Device::launch`]; valid while `self` is neither moved nor
    /// changed.
    pub fn params(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_config_follows_cuda_limits() {
        assert!(LaunchConfig::new((65535, 65535, 65535), (32, 32, 1))
            .validate()
            .is_ok());
        assert!(LaunchConfig::new(1, (1, 1, 64)).validate().is_ok());
        for bad in [
            LaunchConfig::new(0, 32),
            LaunchConfig::new(1, 1025),
            LaunchConfig::new(1, (32, 33, 1)),
            LaunchConfig::new(1, (1, 1, 65)),
            LaunchConfig::new((1, 65536), 32),
            LaunchConfig::new(1u32 << 31, 32),
        ] {
            assert!(bad.validate().is_err(), "{bad} should be rejected");
        }
        let shown = LaunchConfig::new((3, 2), 128)
            .with_shared_bytes(256)
            .to_string();
        assert_eq!(
            shown,
            "grid (3, 2, 1), block (128, 1, 1), 256 B dynamic shared memory"
        );
    }

    #[test]
    fn kernel_args_give_each_value_its_own_aligned_slot() {
        let mut args = KernelArgs::new()
            .ptr(0x1234_5678_9abc)
            .i32(-7)
            .f32(1.5)
            .u32(9)
            .opt_slice::<f32>(None);
        let p = args.params();
        assert_eq!(p.len(), 5);
        // SAFETY: each pointer addresses an 8-byte slot of `args`, which is still alive.
        unsafe {
            assert_eq!(*(p[0] as *const u64), 0x1234_5678_9abc);
            assert_eq!(*(p[1] as *const i32), -7);
            assert_eq!(*(p[2] as *const f32), 1.5);
            assert_eq!(*(p[3] as *const u32), 9);
            assert_eq!(*(p[4] as *const u64), 0, "None is a null pointer");
        }
        assert!(p.iter().all(|&q| (q as usize).is_multiple_of(8)));
    }

    #[test]
    fn device_slices_are_typed_byte_ranges() {
        let s = DeviceSlice::<f32>::new(0x1000, 10);
        assert_eq!(s.bytes(), 40);
        let sub = s.slice(2..5);
        assert_eq!((sub.ptr(), sub.len()), (0x1008, 3));
        assert!(
            std::panic::catch_unwind(|| s.slice(8..11)).is_err(),
            "out of range"
        );
    }
}
