//! The host side of the CUDA kernels: a device interface shaped like the CUDA driver API, the
//! launchers of the kernels in kernels/, and an emulated device that runs those kernels on the CPU.
//!
//! * [`device`]: the [`Device`] trait (memory + `cuLaunchKernel`-style launches) that the CUDA
//!   backend's host code is written against, so it runs unchanged on a GPU or on the emulator.
//! * [`kernels`]: one launcher per kernel (shape checks, launch configuration, parameter list).
//! * [`emu`]: [`EmuDevice`], the kernel test bench: the same .cu sources compiled for the CPU by
//!   build.rs. See docs/KERNEL_BENCH.md.
//! * [`nvrtc`]: the same kernels compiled for the GPU by NVRTC in build.rs (CUBIN + PTX), and
//!   ptxas's register and spill report.
//!
//! * [`occupancy`]: blocks per SM by compute capability 9.0's rules, for the emulated device's
//!   occupancy queries and cooperative launches.
//! * [`nvtx`]: NVTX ranges for Nsight, through the NVTX interop library when it is there.
//! * [`cuda`]: [`CudaDevice`], the real GPU through cudarc's driver API, running those kernels.

pub mod cuda;
pub mod device;
pub mod emu;
pub mod kernels;
pub mod nvrtc;
pub mod nvtx;
pub mod occupancy;

pub use cuda::{CudaDevice, Unavailable};
pub use device::{
    Device, DeviceCounts, DeviceExt, DevicePtr, DeviceSlice, Dim3, GpuError, GraphId, KernelArgs,
    LaunchConfig,
};
pub use emu::{EmuDevice, Schedule, EMU_DEFAULT_CAPACITY, EMU_SM_COUNT};
pub use occupancy::KernelResources;
