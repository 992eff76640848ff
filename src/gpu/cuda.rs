//! [`CudaDevice`]: the real GPU behind the [`Device`] interface, through cudarc's thin wrappers of
//! the CUDA driver API (`cuMemAlloc`, `cuMemcpy*`, `cuModuleLoadData`, `cuLaunchKernel`). The
//! kernels are the ones build.rs compiled with NVRTC ([`super::nvrtc::MODULES`]): the CUBIN when
//! the GPU is the architecture it was built for, otherwise the PTX, which the driver JIT-compiles.
//!
//! cudarc loads libcuda at run time and panics on its first driver call when the library is
//! missing, so [`CudaDevice::open`] checks for it first and explains what is missing instead.
//! Everything runs on one stream the device creates (capturable into a CUDA graph, unlike the
//! legacy default stream), in order: every copy and memset is ordered after the launches before
//! it. The stream is a blocking one (not CU_STREAM_NON_BLOCKING), so CUDA events recorded on the
//! legacy stream (the benches' timer) still bracket its work. One `CudaDevice` is used from one
//! thread (the context is made current on the thread that opens it).

use super::device::{
    Counted, Counters, Device, DeviceCounts, DevicePtr, GpuError, GraphId, LaunchConfig,
};
use super::nvrtc;
use super::nvtx;
use cudarc::driver::{result, sys};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_void, CString};

/// Why no CUDA device can be used, in one line for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The binary was built without NVRTC, so it holds no GPU code.
    NoKernels(String),
    /// libcuda (the driver) is not installed or not on the library path.
    NoDriver,
    /// The driver works but reports no GPU (or failed to initialise).
    NoGpu(String),
    /// The GPU is there but the kernels or a context could not be loaded.
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NoKernels(why) => write!(
                f,
                "this robo-poet binary has no compiled CUDA kernels ({why}); rebuild with NVRTC 13.0 on the library path (README, Developers)"
            ),
            Unavailable::NoDriver => write!(
                f,
                "no CUDA driver: libcuda.so was not found on the library path (is an NVIDIA driver installed?)"
            ),
            Unavailable::NoGpu(why) => write!(f, "no usable CUDA GPU: {why}"),
            Unavailable::Failed(why) => write!(f, "the CUDA device could not be set up: {why}"),
        }
    }
}

fn driver_message(e: result::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name}: {text}")
}

fn driver(op: &str, e: result::DriverError) -> GpuError {
    GpuError::Driver {
        op: op.to_string(),
        message: driver_message(e),
    }
}

/// The first GPU, its context and the project's kernels loaded into it.
pub struct CudaDevice {
    name: String,
    /// (major, minor) compute capability.
    capability: (i32, i32),
    device: sys::CUdevice,
    modules: Vec<sys::CUmodule>,
    functions: HashMap<String, sys::CUfunction>,
    /// The last kernel launched, named in errors that surface later (launches are asynchronous).
    last_launch: RefCell<Option<(String, LaunchConfig)>>,
    stream: sys::CUstream,
    staging: RefCell<Staging>,
    capturing: Cell<bool>,
    graphs: RefCell<HashMap<u64, sys::CUgraphExec>>,
    next_graph: Cell<u64>,
    counters: Counters,
    /// CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN.
    shared_optin: u32,
    /// CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT.
    sms: u32,
    /// CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: whether cuLaunchCooperativeKernel works here.
    cooperative: bool,
}

/// Page-locked staging memory for [`Device::upload_async`]: a ring of slots, each with the event
/// recorded after the copy that reads it, so a slot is rewritten only once its copy has run.
struct Staging {
    slots: Vec<StagingSlot>,
    next: usize,
}

struct StagingSlot {
    ptr: *mut u8,
    cap: usize,
    event: sys::CUevent,
    /// A copy from this slot was queued and its event recorded.
    pending: bool,
}

/// Slots in the staging ring: the host can queue this many uploads ahead of the device before
/// one waits.
const STAGING_SLOTS: usize = 8;

impl CudaDevice {
    /// Opens GPU 0, makes its primary context current on this thread and loads every kernel.
    pub fn open() -> Result<Self, Unavailable> {
        if !nvrtc::COMPILED {
            return Err(Unavailable::NoKernels(
                nvrtc::NOT_COMPILED_REASON.to_string(),
            ));
        }
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(Unavailable::NoDriver);
        }
        result::init()
            .map_err(|e| Unavailable::NoGpu(format!("cuInit failed ({})", driver_message(e))))?;
        let count =
            result::device::get_count().map_err(|e| Unavailable::NoGpu(driver_message(e)))?;
        if count < 1 {
            return Err(Unavailable::NoGpu("the driver reports 0 devices".into()));
        }
        let device = result::device::get(0).map_err(|e| Unavailable::NoGpu(driver_message(e)))?;
        let name = result::device::get_name(device).unwrap_or_else(|_| "CUDA device 0".into());
        // SAFETY: `device` came from device::get.
        let capability = unsafe {
            let attr = |a| result::device::get_attribute(device, a);
            (
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            )
        };
        let capability = (
            capability
                .0
                .map_err(|e| Unavailable::Failed(driver_message(e)))?,
            capability
                .1
                .map_err(|e| Unavailable::Failed(driver_message(e)))?,
        );
        // SAFETY: `device` is valid; the primary context is released in Drop.
        unsafe {
            let ctx = result::primary_ctx::retain(device).map_err(|e| {
                Unavailable::Failed(format!("cuDevicePrimaryCtxRetain: {}", driver_message(e)))
            })?;
            result::ctx::set_current(ctx).map_err(|e| {
                Unavailable::Failed(format!("cuCtxSetCurrent: {}", driver_message(e)))
            })?;
        }
        // SAFETY: `device` came from device::get.
        let shared_optin = unsafe {
            result::device::get_attribute(
                device,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
        }
        .map_err(|e| Unavailable::Failed(driver_message(e)))? as u32;
        // SAFETY: as above.
        let (sms, cooperative) = unsafe {
            let attr = |a| {
                result::device::get_attribute(device, a)
                    .map_err(|e| Unavailable::Failed(driver_message(e)))
            };
            (
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)?,
            )
        };
        let stream = result::stream::create(result::stream::StreamKind::Default)
            .map_err(|e| Unavailable::Failed(format!("cuStreamCreate: {}", driver_message(e))))?;
        let mut slots = Vec::with_capacity(STAGING_SLOTS);
        for _ in 0..STAGING_SLOTS {
            let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| {
                    Unavailable::Failed(format!("cuEventCreate: {}", driver_message(e)))
                })?;
            slots.push(StagingSlot {
                ptr: std::ptr::null_mut(),
                cap: 0,
                event,
                pending: false,
            });
        }
        let mut dev = CudaDevice {
            name,
            capability,
            device,
            modules: Vec::new(),
            functions: HashMap::new(),
            last_launch: RefCell::new(None),
            stream,
            staging: RefCell::new(Staging { slots, next: 0 }),
            capturing: Cell::new(false),
            graphs: RefCell::new(HashMap::new()),
            next_graph: Cell::new(1),
            counters: Counters::default(),
            shared_optin,
            sms: sms as u32,
            cooperative: cooperative != 0,
        };
        dev.load_kernels().map_err(Unavailable::Failed)?;
        Ok(dev)
    }

    /// The GPU's compute capability, e.g. (9, 0) for an H100.
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// "sm_90"-style name of the GPU's architecture.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.capability.0, self.capability.1)
    }

    fn load_kernels(&mut self) -> Result<(), String> {
        let native = self.arch() == nvrtc::ARCH;
        for m in nvrtc::MODULES {
            // include_bytes! data has alignment 1; the driver reads the CUBIN's ELF header in
            // place, with 8-byte fields.
            let cubin = aligned_image(m.cubin);
            // The CUBIN runs only on its own architecture; elsewhere the driver JIT-compiles the
            // PTX (which needs a driver at least as new as NVRTC 13.0).
            let module = if native {
                // SAFETY: a CUBIN image produced by NVRTC, 8-byte aligned, alive during the call
                // (the driver copies what it keeps).
                unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }.map_err(
                    |e| {
                        format!(
                            "loading {} (CUBIN {}): {}",
                            m.source,
                            nvrtc::ARCH,
                            driver_message(e)
                        )
                    },
                )?
            } else {
                let ptx = CString::new(m.ptx)
                    .map_err(|_| format!("{}: PTX holds a NUL byte", m.source))?;
                // SAFETY: a NUL-terminated PTX image, alive during the call.
                unsafe { result::module::load_data(ptx.as_ptr() as *const c_void) }.map_err(
                    |e| {
                        format!(
                            "loading {} (PTX, JIT for {}): {}",
                            m.source,
                            self.arch(),
                            driver_message(e)
                        )
                    },
                )?
            };
            self.modules.push(module);
            for k in nvrtc::parse_ptxas_report(m.ptxas_log) {
                let cname = CString::new(k.name.clone()).expect("kernel names hold no NUL");
                // SAFETY: `module` was just loaded and is unloaded only in Drop.
                let f = unsafe { result::module::get_function(module, cname) }.map_err(|e| {
                    format!("kernel {} of {}: {}", k.name, m.source, driver_message(e))
                })?;
                self.functions.insert(k.name, f);
            }
        }
        Ok(())
    }

    /// Names of the loaded kernels, sorted.
    pub fn kernel_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The loaded kernel named `kernel`.
    fn function(&self, kernel: &str) -> Result<sys::CUfunction, GpuError> {
        self.functions
            .get(kernel)
            .copied()
            .ok_or_else(|| GpuError::UnknownKernel {
                kernel: kernel.to_string(),
                available: self.kernel_names().iter().map(|s| s.to_string()).collect(),
            })
    }

    /// `cuLaunchKernel`, or `cuLaunchCooperativeKernel` when `cooperative`, on the device's
    /// stream (recorded as a graph node while it is being captured).
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
        let f = self.function(kernel)?;
        let rejected = |reason: String| GpuError::InvalidLaunch {
            kernel: kernel.to_string(),
            config: *config,
            reason,
        };
        config.validate().map_err(rejected)?;
        if cooperative && !self.cooperative {
            return Err(rejected(format!(
                "{} does not support cooperative launches (CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH is 0)",
                self.name
            )));
        }
        let (g, b) = (config.grid, config.block);
        let op = if cooperative {
            "cuLaunchCooperativeKernel"
        } else {
            "cuLaunchKernel"
        };
        // One NVTX range per launch, named by the kernel (a no-op without the NVTX library).
        let _range = nvtx::range(kernel);
        // SAFETY: the caller guarantees the parameter list matches the kernel (trait contract).
        let launched = unsafe {
            if cooperative {
                result::launch_cooperative_kernel(
                    f,
                    (g.x, g.y, g.z),
                    (b.x, b.y, b.z),
                    config.shared_bytes,
                    self.stream,
                    params,
                )
            } else {
                result::launch_kernel(
                    f,
                    (g.x, g.y, g.z),
                    (b.x, b.y, b.z),
                    config.shared_bytes,
                    self.stream,
                    params,
                )
            }
        };
        launched.map_err(|e| {
            let mut message = driver_message(e);
            if e.0 == sys::CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE {
                // The driver does not say what the limit is.
                let limit = self
                    .max_active_blocks_per_sm(kernel, b.volume() as u32, config.shared_bytes)
                    .map_or_else(
                        |e| format!("the occupancy query failed: {e}"),
                        |n| {
                            format!(
                                "at most {n} per SM × {} SMs = {} can be resident at once",
                                self.sms,
                                n as u64 * self.sms as u64
                            )
                        },
                    );
                message = format!("{message}: the grid has {} blocks; {limit}", g.volume());
            }
            call_error(
                op,
                Some((kernel, config)),
                self.last_launch.borrow().as_ref(),
                e.0,
                message,
            )
        })?;
        // Only a launch the driver accepted can be the one a later fault belongs to.
        *self.last_launch.borrow_mut() = Some((kernel.to_string(), *config));
        self.counters.count(if self.capturing.get() {
            Counted::CapturedLaunch
        } else {
            Counted::Launch
        });
        Ok(())
    }

    /// Refuses `op` during stream capture (the driver would invalidate the capture).
    fn not_while_capturing(&self, op: &str) -> Result<(), GpuError> {
        if self.capturing.get() {
            return Err(GpuError::Unsupported {
                op: op.to_string(),
                reason: format!(
                    "{op} is not permitted while the stream is being captured into a graph"
                ),
            });
        }
        Ok(())
    }

    /// Waits for the device's stream; counted as a host synchronisation.
    fn sync_stream(&self, op: &str) -> Result<(), GpuError> {
        self.counters.count(Counted::HostSync);
        // SAFETY: the stream was created by this device and lives until Drop.
        unsafe { result::stream::synchronize(self.stream) }.map_err(|e| self.async_error(op, e))
    }

    /// An error of a memory operation or a synchronisation: an earlier kernel's execution fault
    /// (named: the last launch is the most likely culprit) or an error of the call itself.
    fn async_error(&self, op: &str, e: result::DriverError) -> GpuError {
        call_error(
            op,
            None,
            self.last_launch.borrow().as_ref(),
            e.0,
            driver_message(e),
        )
    }
}

/// Whether `code` is a kernel's execution fault rather than an error of the call that returned it.
/// Faults are sticky: once a kernel faults, the context is broken and every later call (the next
/// launch, copy or synchronisation) returns the fault, so the call that sees it is usually not
/// the culprit. Configuration errors (too many threads or registers, a bad parameter) belong to
/// the call that returns them.
pub fn is_execution_fault(code: sys::CUresult) -> bool {
    use sys::CUresult::*;
    matches!(
        code,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_ECC_UNCORRECTABLE
    )
}

/// The error of a driver call `op` that returned `code` (`message`: its name and text).
/// `launching` is the kernel this call launches (None for copies and synchronisation);
/// `previous` the last launch the driver accepted. An execution fault is blamed on `previous`,
/// the most likely culprit (launches are asynchronous, so it may be an earlier one still), with
/// the way to pin it down; any other error belongs to this call.
pub fn call_error(
    op: &str,
    launching: Option<(&str, &LaunchConfig)>,
    previous: Option<&(String, LaunchConfig)>,
    code: sys::CUresult,
    message: String,
) -> GpuError {
    let during = match launching {
        Some((k, _)) => format!("launching {k}"),
        None => op.to_string(),
    };
    if is_execution_fault(code) {
        let hint = "the context is unusable now; rerun under `compute-sanitizer --tool memcheck` \
                    (or with CUDA_LAUNCH_BLOCKING=1) to find the faulting kernel and line";
        return match previous {
            Some((kernel, config)) => GpuError::KernelFailed {
                kernel: kernel.clone(),
                config: *config,
                report: format!(
                    "{message}: an execution fault, reported by {during}; the faulting kernel is most likely \
                     this one, the last launched before it (or an earlier one: launches are asynchronous); {hint}"
                ),
            },
            None => GpuError::Driver {
                op: op.to_string(),
                message: format!("{message}: an execution fault, with no kernel launched by this device before it; {hint}"),
            },
        };
    }
    match launching {
        Some((kernel, config)) => GpuError::InvalidLaunch {
            kernel: kernel.to_string(),
            config: *config,
            reason: message,
        },
        None => GpuError::Driver {
            op: op.to_string(),
            message,
        },
    }
}

/// `bytes` copied into 8-byte-aligned storage (zero-padded to a whole word).
pub fn aligned_image(bytes: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    words
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // SAFETY: modules, graphs, staging memory, events and the stream were created by this
        // device; nothing uses them after this.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            for (_, g) in self.graphs.get_mut().drain() {
                let _ = result::graph::exec_destroy(g);
            }
            for slot in self.staging.get_mut().slots.drain(..) {
                if !slot.ptr.is_null() {
                    let _ = result::free_host(slot.ptr as *mut c_void);
                }
                let _ = result::event::destroy(slot.event);
            }
            let _ = result::stream::destroy(self.stream);
            let _ = result::ctx::synchronize();
            for m in self.modules.drain(..) {
                let _ = result::module::unload(m);
            }
            let _ = result::primary_ctx::release(self.device);
        }
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        format!("{} ({})", self.name, self.arch())
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError> {
        self.not_while_capturing("cuMemAlloc")?;
        if bytes == 0 {
            return Err(GpuError::InvalidMemory {
                op: "alloc",
                reason: "cannot allocate 0 bytes".into(),
            });
        }
        // SAFETY: plain allocation in the current context.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                Err(GpuError::OutOfMemory { bytes })
            }
            Err(e) => Err(self.async_error("cuMemAlloc", e)),
        }
    }

    fn free(&self, ptr: DevicePtr) -> Result<(), GpuError> {
        self.not_while_capturing("cuMemFree")?;
        // SAFETY: the caller passes an address returned by alloc (the trait's contract).
        unsafe { result::free_sync(ptr) }.map_err(|e| self.async_error("cuMemFree", e))
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        self.not_while_capturing("cuMemcpyHtoD")?;
        if src.is_empty() {
            return Ok(());
        }
        self.counters.count(Counted::HtoD(src.len()));
        // SAFETY: the driver checks that dst..dst+len lies in device memory it knows; `src` is
        // pageable, so the driver stages it before returning, and the stream is then synchronised.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(|e| self.async_error("cuMemcpyHtoDAsync", e))?;
        self.sync_stream("cuStreamSynchronize")
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<(), GpuError> {
        self.not_while_capturing("cuMemcpyDtoH")?;
        if dst.is_empty() {
            return Ok(());
        }
        self.counters.count(Counted::DtoH(dst.len()));
        // SAFETY: as in copy_htod; `dst` stays borrowed until the stream has been synchronised.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(|e| self.async_error("cuMemcpyDtoHAsync", e))?;
        self.sync_stream("cuStreamSynchronize")
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError> {
        self.not_while_capturing("cuMemcpyDtoD")?;
        if bytes == 0 {
            return Ok(());
        }
        self.counters.count(Counted::DtoD(bytes));
        // SAFETY: as in copy_htod.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream) }
            .map_err(|e| self.async_error("cuMemcpyDtoDAsync", e))?;
        self.sync_stream("cuStreamSynchronize")
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), GpuError> {
        if bytes == 0 {
            return Ok(());
        }
        if !self.capturing.get() {
            self.counters.count(Counted::Memset);
        }
        // SAFETY: as in copy_htod; queued on the stream (a memset node during capture).
        unsafe { result::memset_d8_async(dst, value, bytes, self.stream) }
            .map_err(|e| self.async_error("cuMemsetD8Async", e))
    }

    fn upload_async(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        // A graph would read the staging slot when it runs, not now.
        self.not_while_capturing("upload_async")?;
        if src.is_empty() {
            return Ok(());
        }
        let mut staging = self.staging.borrow_mut();
        let i = staging.next;
        staging.next = (i + 1) % staging.slots.len();
        let slot = &mut staging.slots[i];
        if slot.pending {
            // SAFETY: the event belongs to this device and was recorded after the slot's copy.
            let done = unsafe { result::event::query(slot.event) };
            if done.is_err() {
                // still queued (or failed): wait, and count the wait
                self.counters.count(Counted::HostSync);
                // SAFETY: as above.
                unsafe { result::event::synchronize(slot.event) }
                    .map_err(|e| self.async_error("cuEventSynchronize", e))?;
            }
            slot.pending = false;
        }
        if slot.cap < src.len() {
            if !slot.ptr.is_null() {
                // SAFETY: allocated by malloc_host below; its last copy has run (waited above).
                unsafe { result::free_host(slot.ptr as *mut c_void) }
                    .map_err(|e| driver("cuMemFreeHost", e))?;
                slot.ptr = std::ptr::null_mut();
                slot.cap = 0;
            }
            let cap = src.len().next_multiple_of(64 * 1024);
            // SAFETY: plain page-locked allocation, freed in Drop or when outgrown.
            slot.ptr = unsafe { result::malloc_host(cap, 0) }
                .map_err(|e| driver("cuMemHostAlloc", e))? as *mut u8;
            slot.cap = cap;
        }
        // SAFETY: the slot holds cap >= src.len() bytes and no queued copy reads it any more.
        let staged = unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), slot.ptr, src.len());
            std::slice::from_raw_parts(slot.ptr as *const u8, src.len())
        };
        self.counters.count(Counted::HtoD(src.len()));
        // SAFETY: page-locked source, valid until the event below has fired; dst is the
        // caller's device memory (the driver checks the range).
        unsafe { result::memcpy_htod_async(dst, staged, self.stream) }
            .map_err(|e| self.async_error("cuMemcpyHtoDAsync", e))?;
        // SAFETY: event and stream belong to this device.
        unsafe { result::event::record(slot.event, self.stream) }
            .map_err(|e| self.async_error("cuEventRecord", e))?;
        slot.pending = true;
        Ok(())
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.not_while_capturing("cuStreamSynchronize")?;
        self.sync_stream("cuStreamSynchronize")
    }

    fn counts(&self) -> DeviceCounts {
        self.counters.snapshot()
    }

    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), GpuError> {
        let Some(&f) = self.functions.get(kernel) else {
            return Err(GpuError::UnknownKernel {
                kernel: kernel.to_string(),
                available: self.kernel_names().iter().map(|s| s.to_string()).collect(),
            });
        };
        // SAFETY: `f` was loaded by this device and lives until Drop.
        unsafe {
            result::function::set_function_attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(|e| GpuError::Driver {
            op: format!("cuFuncSetAttribute({kernel}, MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes})"),
            message: driver_message(e),
        })
    }

    fn max_shared_optin(&self) -> u32 {
        self.shared_optin
    }

    fn begin_capture(&self) -> Result<(), GpuError> {
        if self.capturing.get() {
            return Err(GpuError::Unsupported {
                op: "cuStreamBeginCapture".into(),
                reason: "the stream is already being captured".into(),
            });
        }
        // SAFETY: the stream belongs to this device. Global mode: the driver refuses calls that
        // are unsafe during capture (allocations, synchronous copies) from any thread.
        unsafe {
            result::stream::begin_capture(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL,
            )
        }
        .map_err(|e| self.async_error("cuStreamBeginCapture", e))?;
        self.capturing.set(true);
        Ok(())
    }

    fn end_capture(&self) -> Result<GraphId, GpuError> {
        if !self.capturing.get() {
            return Err(GpuError::Unsupported {
                op: "cuStreamEndCapture".into(),
                reason: "no capture in progress".into(),
            });
        }
        self.capturing.set(false);
        // SAFETY: the stream is capturing (begin_capture succeeded).
        let graph = unsafe { result::stream::end_capture(self.stream) }
            .map_err(|e| self.async_error("cuStreamEndCapture", e))?;
        // SAFETY: `graph` was just captured; the executable graph keeps what it needs, so the
        // graph itself is destroyed right away.
        let exec = unsafe {
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec
        }
        .map_err(|e| self.async_error("cuGraphInstantiate", e))?;
        let id = self.next_graph.get();
        self.next_graph.set(id + 1);
        self.graphs.borrow_mut().insert(id, exec);
        Ok(GraphId(id))
    }

    fn launch_graph(&self, graph: GraphId) -> Result<(), GpuError> {
        self.not_while_capturing("cuGraphLaunch")?;
        let exec = *self
            .graphs
            .borrow()
            .get(&graph.0)
            .ok_or_else(|| GpuError::Unsupported {
                op: "cuGraphLaunch".into(),
                reason: format!("no graph {}", graph.0),
            })?;
        self.counters.count(Counted::GraphLaunch);
        // SAFETY: `exec` was instantiated by this device and is destroyed only by destroy_graph.
        unsafe { result::graph::launch(exec, self.stream) }
            .map_err(|e| self.async_error("cuGraphLaunch", e))
    }

    fn destroy_graph(&self, graph: GraphId) -> Result<(), GpuError> {
        if let Some(exec) = self.graphs.borrow_mut().remove(&graph.0) {
            // SAFETY: instantiated by this device; the driver defers the destruction until the
            // graph's queued launches have run.
            unsafe { result::graph::exec_destroy(exec) }
                .map_err(|e| self.async_error("cuGraphExecDestroy", e))?;
        }
        Ok(())
    }

    fn mem_get_info(&self) -> Result<(usize, usize), GpuError> {
        result::mem_get_info().map_err(|e| driver("cuMemGetInfo", e))
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
        let f = self.function(kernel)?;
        // SAFETY: `f` was loaded by this device and lives until Drop.
        unsafe {
            result::occupancy::max_active_block_per_multiprocessor(
                f,
                block_threads as i32,
                dynamic_shared as usize,
            )
        }
        .map(|n| n.max(0) as u32)
        .map_err(|e| GpuError::Driver {
            op: format!(
                "cuOccupancyMaxActiveBlocksPerMultiprocessor({kernel}, {block_threads} threads, {dynamic_shared} B)"
            ),
            message: driver_message(e),
        })
    }

    fn sm_count(&self) -> u32 {
        self.sms
    }

    fn range_push(&self, name: &str) {
        nvtx::push(name);
    }

    fn range_pop(&self) {
        nvtx::pop();
    }

    fn profiler_capture(&self, on: bool) -> Result<(), GpuError> {
        // SAFETY: no arguments; acts on the current context, which `open` made current.
        let r = unsafe {
            if on {
                sys::cuProfilerStart()
            } else {
                sys::cuProfilerStop()
            }
        };
        r.result().map_err(|e| {
            driver(
                if on {
                    "cuProfilerStart"
                } else {
                    "cuProfilerStop"
                },
                e,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sys::CUresult::*;

    fn previous() -> (String, LaunchConfig) {
        ("layernorm_forward".to_string(), LaunchConfig::new(4, 128))
    }

    #[test]
    fn an_execution_fault_is_blamed_on_the_previous_launch_with_a_sanitizer_hint() {
        let this = LaunchConfig::new(2, 64);
        let prev = previous();
        let e = call_error(
            "cuLaunchKernel",
            Some(("gelu_forward", &this)),
            Some(&prev),
            CUDA_ERROR_ILLEGAL_ADDRESS,
            "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered".into(),
        );
        match &e {
            GpuError::KernelFailed {
                kernel,
                config,
                report,
            } => {
                assert_eq!(kernel, "layernorm_forward");
                assert_eq!(*config, prev.1);
                for want in [
                    "launching gelu_forward",
                    "compute-sanitizer",
                    "ILLEGAL_ADDRESS",
                ] {
                    assert!(report.contains(want), "{e}");
                }
            }
            other => panic!("expected KernelFailed, got {other:?}"),
        }
        // the same from a copy
        let e = call_error(
            "cuMemcpyDtoH",
            None,
            Some(&prev),
            CUDA_ERROR_LAUNCH_FAILED,
            "CUDA_ERROR_LAUNCH_FAILED: unspecified launch failure".into(),
        );
        assert!(
            matches!(&e, GpuError::KernelFailed { kernel, .. } if kernel == "layernorm_forward"),
            "{e}"
        );
        assert!(e.to_string().contains("reported by cuMemcpyDtoH"), "{e}");
    }

    #[test]
    fn a_configuration_error_belongs_to_the_launch_that_returned_it() {
        let this = LaunchConfig::new(2, 1024);
        for code in [
            CUDA_ERROR_INVALID_VALUE,
            CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            CUDA_ERROR_INVALID_HANDLE,
            CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
        ] {
            assert!(!is_execution_fault(code), "{code:?}");
            let e = call_error(
                "cuLaunchKernel",
                Some(("attention_forward", &this)),
                Some(&previous()),
                code,
                format!("{code:?}"),
            );
            assert!(
                matches!(&e, GpuError::InvalidLaunch { kernel, config, .. } if kernel == "attention_forward" && *config == this),
                "{code:?}: {e}"
            );
        }
        // a copy's own error is a driver error, not a kernel's
        let e = call_error(
            "cuMemcpyHtoD",
            None,
            Some(&previous()),
            CUDA_ERROR_INVALID_VALUE,
            "bad".into(),
        );
        assert!(matches!(e, GpuError::Driver { .. }), "{e}");
    }

    #[test]
    fn a_fault_with_no_launch_before_it_says_so() {
        let e = call_error(
            "cuCtxSynchronize",
            None,
            None,
            CUDA_ERROR_ILLEGAL_ADDRESS,
            "x".into(),
        );
        assert!(matches!(&e, GpuError::Driver { .. }), "{e}");
        assert!(e.to_string().contains("no kernel launched"), "{e}");
    }

    #[test]
    fn module_images_are_copied_to_8_byte_aligned_storage() {
        let bytes: Vec<u8> = (0..37u8).collect();
        for start in 0..8 {
            let src = &bytes[start..];
            let img = aligned_image(src);
            assert_eq!(img.as_ptr() as usize % 8, 0);
            let b: &[u8] = bytemuck::cast_slice(&img);
            assert_eq!(&b[..src.len()], src);
            assert!(b[src.len()..].iter().all(|&x| x == 0));
            assert_eq!(b.len(), src.len().div_ceil(8) * 8);
        }
    }
}
