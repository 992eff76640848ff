//! `robo-poet kernels`: the CUDA kernels embedded in this binary and what ptxas said about them.

use super::KernelsArgs;
use crate::gpu::nvrtc;
use anyhow::{bail, Result};

pub fn run(a: &KernelsArgs) -> Result<()> {
    if !nvrtc::COMPILED {
        println!(
            "The CUDA kernels were not compiled into this binary: {}",
            nvrtc::NOT_COMPILED_REASON
        );
        println!("Rebuild with NVRTC on LD_LIBRARY_PATH (set ROBO_POET_REQUIRE_NVRTC=1 to make a missing NVRTC an error).");
        if a.check_spills {
            bail!("--check-spills: no kernels to check (this binary was built without NVRTC)");
        }
        return Ok(());
    }
    let usage = nvrtc::kernel_usage();
    println!(
        "CUDA kernels compiled by NVRTC {} for {} (CUBIN) + PTX, {} kernels in {} files:\n",
        nvrtc::NVRTC_VERSION,
        nvrtc::ARCH,
        usage.len(),
        nvrtc::MODULES.len()
    );
    print!("{}", nvrtc::report_table(&usage));
    match crate::gpu::CudaDevice::open() {
        Ok(dev) => {
            use crate::gpu::Device;
            println!(
                "\nGPU: {}, {} kernels loaded{}",
                dev.name(),
                dev.kernel_names().len(),
                if dev.arch() == nvrtc::ARCH {
                    " (CUBIN)"
                } else {
                    " (PTX, JIT-compiled by the driver)"
                }
            );
        }
        Err(why) => println!("\nGPU: none usable here ({why})"),
    }
    if a.check_spills {
        let spilling: Vec<&str> = usage
            .iter()
            .filter(|(_, k)| k.spills())
            .map(|(_, k)| k.name.as_str())
            .collect();
        if usage.is_empty() {
            bail!("--check-spills: ptxas reported no kernels (see the logs in build.rs's OUT_DIR/nvrtc)");
        }
        if !spilling.is_empty() {
            bail!(
                "--check-spills: {} spill registers to local memory: {}",
                spilling.len(),
                spilling.join(", ")
            );
        }
        println!("\nno kernel spills");
    }
    Ok(())
}
