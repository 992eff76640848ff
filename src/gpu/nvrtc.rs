//! The CUDA kernels as build.rs compiled them with NVRTC (module `nvrtc` there): per kernels/*.cu
//! a CUBIN for [`ARCH`] and PTX for later GPUs, embedded in the binary, and ptxas's report of what
//! each kernel uses (registers, shared memory, spills), which `robo-poet kernels` prints.
//!
//! When NVRTC was not found at build time, [`COMPILED`] is false, [`MODULES`] is empty and
//! [`NOT_COMPILED_REASON`] says why.

/// One kernels/*.cu as NVRTC compiled it.
#[derive(Clone, Copy, Debug)]
pub struct CudaModule {
    /// Its source file, relative to the crate root.
    pub source: &'static str,
    /// Machine code for [`ARCH`] (what `cuModuleLoadData` takes on that GPU).
    pub cubin: &'static [u8],
    /// PTX for the matching virtual architecture, JIT-compiled by the driver on newer GPUs.
    pub ptx: &'static str,
    /// NVRTC's log of the CUBIN compile, which holds ptxas's `-v` report.
    pub ptxas_log: &'static str,
}

mod generated {
    use super::CudaModule;
    include!(concat!(env!("OUT_DIR"), "/nvrtc_kernels.rs"));
}

pub use generated::{ARCH, COMPILED, MODULES, NOT_COMPILED_REASON, NVRTC_VERSION};

/// What ptxas reported for one kernel (an entry function).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelUsage {
    pub name: String,
    /// The GPU architecture it was compiled for (`sm_90`).
    pub arch: String,
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u64,
    pub stack_bytes: u64,
    pub spill_stores: u64,
    pub spill_loads: u64,
}

impl KernelUsage {
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// Parses ptxas's `-v` report (as NVRTC logs it) into one entry per kernel, in log order.
///
/// The report, per entry function:
/// ```text
/// ptxas info    : Compiling entry function 'matmul_forward' for 'sm_90'
/// ptxas info    : Function properties for matmul_forward
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 30 registers, used 1 barriers, 8448 bytes smem, 400 bytes cmem[0]
/// ```
/// `Function properties` blocks of non-inlined device functions are not kernels and are skipped.
pub fn parse_ptxas_report(log: &str) -> Vec<KernelUsage> {
    let mut kernels: Vec<KernelUsage> = Vec::new();
    // the entry being compiled, and whose `Function properties` block we are in (if any)
    let mut current: Option<usize> = None;
    let mut properties_of_current = false;
    for line in log.lines() {
        let line = line.trim();
        let info = line.strip_prefix("ptxas info").map(|rest| {
            rest.trim_start()
                .strip_prefix(':')
                .unwrap_or(rest)
                .trim_start()
        });
        if let Some(info) = info {
            if let Some(rest) = info.strip_prefix("Compiling entry function ") {
                let mut quoted = rest.split('\'').skip(1).step_by(2);
                let name = quoted.next().unwrap_or_default().to_string();
                let arch = quoted.next().unwrap_or_default().to_string();
                kernels.push(KernelUsage {
                    name,
                    arch,
                    ..KernelUsage::default()
                });
                current = Some(kernels.len() - 1);
                properties_of_current = false;
            } else if let Some(name) = info.strip_prefix("Function properties for ") {
                properties_of_current = current.is_some_and(|k| kernels[k].name == name.trim());
            } else if let Some(rest) = info.strip_prefix("Used ") {
                if let Some(k) = current {
                    for part in rest.split(',') {
                        let mut words = part.split_whitespace();
                        let n = words.next().and_then(|w| w.parse::<u64>().ok());
                        let unit: Vec<&str> = words.collect();
                        match (n, unit.as_slice()) {
                            (Some(n), ["registers"]) => kernels[k].registers = n as u32,
                            (Some(n), ["bytes", "smem"]) => kernels[k].shared_bytes = n,
                            _ => {}
                        }
                    }
                }
                properties_of_current = false;
            }
        } else if properties_of_current && line.contains("bytes stack frame") {
            let k = current.expect("properties_of_current implies an entry");
            // `ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads`
            for part in line.split(',') {
                let words: Vec<&str> = part.split_whitespace().collect();
                let Some(at) = words.iter().position(|&w| w == "bytes") else {
                    continue;
                };
                let Some(n) = at.checked_sub(1).and_then(|i| words[i].parse::<u64>().ok()) else {
                    continue;
                };
                match &words[at + 1..] {
                    ["stack", "frame"] => kernels[k].stack_bytes = n,
                    ["spill", "stores"] => kernels[k].spill_stores = n,
                    ["spill", "loads"] => kernels[k].spill_loads = n,
                    _ => {}
                }
            }
        }
    }
    kernels
}

/// Every embedded kernel with its source file, in file order.
pub fn kernel_usage() -> Vec<(&'static str, KernelUsage)> {
    MODULES
        .iter()
        .flat_map(|m| {
            parse_ptxas_report(m.ptxas_log)
                .into_iter()
                .map(move |k| (m.source, k))
        })
        .collect()
}

/// The `robo-poet kernels` table.
pub fn report_table(rows: &[(&str, KernelUsage)]) -> String {
    use std::fmt::Write as _;
    let headers = [
        "kernel",
        "source",
        "registers",
        "shared bytes",
        "spill stores",
        "spill loads",
        "arch",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|(source, k)| {
            [
                k.name.clone(),
                source.to_string(),
                k.registers.to_string(),
                k.shared_bytes.to_string(),
                k.spill_stores.to_string(),
                k.spill_loads.to_string(),
                k.arch.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut s = String::new();
    let mut line = |row: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            // names left-aligned, numbers right-aligned
            if i < 2 || i == 6 {
                write!(l, "{c:<w$}  ").unwrap();
            } else {
                write!(l, "{c:>w$}  ").unwrap();
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&headers.map(String::from));
    for row in &cells {
        line(row);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC 13.0.88's log for kernels/matmul.cu at sm_90 with `--ptxas-options=-v` (captured),
    /// followed by a non-inlined device function (not a kernel: its spills belong to no entry)
    /// and a spilling kernel, in the same format.
    const SAMPLE: &str = include_str!("testdata/ptxas_sample.log");

    #[test]
    fn parses_captured_ptxas_report() {
        let k = parse_ptxas_report(SAMPLE);
        let names: Vec<&str> = k.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["matmul_forward", "spilling_kernel"], "{SAMPLE}");
        assert_eq!(k[0].arch, "sm_90");
        assert_eq!(k[0].registers, 32, "{:?}", k[0]);
        assert_eq!(k[0].shared_bytes, 8448, "{:?}", k[0]);
        assert!(!k[0].spills(), "{:?}", k[0]);
        assert_eq!(k[1].registers, 255, "{:?}", k[1]);
        assert_eq!(k[1].shared_bytes, 0, "{:?}", k[1]);
        assert_eq!(
            (k[1].spill_stores, k[1].spill_loads),
            (96, 88),
            "{:?}",
            k[1]
        );
        assert_eq!(k[1].stack_bytes, 96, "{:?}", k[1]);
        assert!(k[1].spills());
    }

    #[test]
    fn empty_log_has_no_kernels() {
        assert!(parse_ptxas_report("").is_empty());
    }

    /// kernels/grid.cuh's GPU side compiles under NVRTC 13.0 for sm_90, as the kernels that use
    /// it must: the test kernels of tests/kernels/cooperative.cu (which build.rs compiles for the
    /// emulator only) through it, without spills.
    #[test]
    fn grid_barrier_compiles_under_nvrtc() {
        use cudarc::nvrtc::{result, sys};
        use std::ffi::CString;
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            assert!(
                std::env::var("ROBO_POET_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "ROBO_POET_REQUIRE_NVRTC=1 and no libnvrtc on the library path"
            );
            use std::io::Write as _;
            writeln!(
                std::io::stderr(),
                "SKIPPED grid_barrier_compiles_under_nvrtc: no libnvrtc on the library path"
            )
            .ok();
            return;
        }
        let root = env!("CARGO_MANIFEST_DIR");
        let shown = "tests/kernels/cooperative.cu";
        let src = std::fs::read_to_string(format!("{root}/{shown}")).unwrap();
        let c_src = CString::new(src).unwrap();
        let name = CString::new(shown).unwrap();
        let prog = result::create_program(&c_src, Some(&name)).unwrap();
        let options = [
            "--std=c++17".to_string(),
            format!("--gpu-architecture={ARCH}"),
            "--ptxas-options=-v".to_string(),
            format!("--include-path={root}/kernels"),
        ];
        // SAFETY: `prog` was just created and is destroyed once, below.
        let compiled = unsafe { result::compile_program(prog, &options) };
        let log: String = unsafe { result::get_program_log(prog) }
            .unwrap_or_default()
            .iter()
            .map(|&c| c as u8 as char)
            .take_while(|&c| c != '\0')
            .collect();
        unsafe { result::destroy_program(prog) }.ok();
        compiled.unwrap_or_else(|e| panic!("{shown} under NVRTC: {e}\n{log}"));
        let kernels = parse_ptxas_report(&log);
        for name in [
            "coop_exchange",
            "coop_grid_sum",
            "block_returns_before_grid_sync",
        ] {
            let k = kernels
                .iter()
                .find(|k| k.name == name)
                .unwrap_or_else(|| panic!("{name} missing from the ptxas report:\n{log}"));
            assert!(k.registers > 0 && !k.spills(), "{k:?}");
        }
    }

    /// Every kernel the emulator found in kernels/*.cu is in the embedded NVRTC report, with
    /// registers and no spills.
    #[test]
    fn embedded_report_covers_every_kernel() {
        if !COMPILED {
            // straight to stderr: libtest captures print!/eprint! of passing tests
            use std::io::Write as _;
            writeln!(
                std::io::stderr(),
                "SKIPPED embedded_report_covers_every_kernel: CUDA kernels not compiled ({NOT_COMPILED_REASON})"
            )
            .ok();
            return;
        }
        let usage = kernel_usage();
        for emu in crate::gpu::emu::KERNELS {
            let found: Vec<_> = usage.iter().filter(|(_, k)| k.name == emu.name).collect();
            assert_eq!(
                found.len(),
                1,
                "kernel {} ({}) should appear once in the NVRTC report:\n{}",
                emu.name,
                emu.source,
                report_table(&usage)
            );
            let (source, k) = found[0];
            assert_eq!(*source, emu.source, "{}", emu.name);
            assert_eq!(k.arch, ARCH, "{k:?}");
            assert!(k.registers > 0, "{k:?}");
            assert!(!k.spills(), "{k:?} spills registers");
        }
        assert_eq!(usage.len(), crate::gpu::emu::KERNELS.len());
        for m in MODULES {
            assert!(
                !m.cubin.is_empty() && m.ptx.contains(".entry"),
                "{}",
                m.source
            );
        }
    }
}
