//! Build script: compiles the CUDA kernels in kernels/ for the executors that run them.
//!
//! * `emu` — the kernel test bench (docs/KERNEL_BENCH.md): every kernels/*.cu is compiled by the
//!   host C++ compiler as C++20 against kernels/emu/cuda_emu.h into a static library, with a Rust
//!   table from kernel name to launcher (the emulated cuModuleGetFunction). The test-only kernels
//!   in tests/kernels/ go into a second library that only the tests look up.
//! * `nvrtc` — the CUDA backend's kernels: every kernels/*.cu compiled by NVRTC (loaded at build
//!   time, if present) to a CUBIN for the target GPU plus PTX, embedded in the binary with the
//!   ptxas report (registers, shared memory, spills) that `robo-poet kernels` prints.

fn main() {
    emu::build();
    nvrtc::build();
}

mod nvrtc {
    use cudarc::nvrtc::{result, sys};
    use std::env;
    use std::ffi::{c_char, CString};
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};

    const ARCH_ENV: &str = "ROBO_POET_CUDA_ARCH";
    const REQUIRE_ENV: &str = "ROBO_POET_REQUIRE_NVRTC";
    /// The GPU machines: H100 / H200.
    const DEFAULT_ARCH: &str = "sm_90";
    /// Generated Rust, in OUT_DIR: what src/gpu/nvrtc.rs includes.
    const TABLE: &str = "nvrtc_kernels.rs";
    /// Options common to the CUBIN and the PTX compile. -lineinfo costs nothing at run time and
    /// lets compute-sanitizer and ncu point at source lines.
    const COMMON_OPTIONS: [&str; 2] = ["--std=c++17", "-lineinfo"];

    /// One compiled kernels/*.cu.
    struct Unit {
        /// Path relative to the crate root, as the binary shows it.
        shown: String,
        cubin: PathBuf,
        ptx: PathBuf,
        /// NVRTC's log of the CUBIN compile, ptxas report included.
        log: PathBuf,
    }

    pub fn build() {
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        println!("cargo:rerun-if-env-changed={ARCH_ENV}");
        println!("cargo:rerun-if-env-changed={REQUIRE_ENV}");
        // where the dynamic loader looks for libnvrtc: a build without it must redo this step
        // once NVRTC is on the path
        println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
        // kernels/ itself is watched by the emu step

        let require = matches!(
            env::var(REQUIRE_ENV).unwrap_or_default().as_str(),
            "1" | "true" | "yes"
        );
        let arch = target_arch();
        let table = match compile_all(&root, &out, &arch) {
            Ok((version, units)) => compiled_table(&arch, &version, &units),
            Err(why) => {
                if require {
                    panic!(
                        "{REQUIRE_ENV} is set and the CUDA kernels could not be compiled:\n{why}"
                    );
                }
                let first = why.lines().next().unwrap_or_default();
                println!("cargo:warning=CUDA kernels not compiled (the CPU emulator is unaffected): {first}");
                for line in why.lines().skip(1).take(40) {
                    println!("cargo:warning=    {line}");
                }
                not_compiled_table(&arch, &why)
            }
        };
        fs::write(out.join(TABLE), table).unwrap();
    }

    /// `sm_90` unless overridden; `90`, `sm_90` and `sm_90a` are accepted.
    fn target_arch() -> String {
        let raw = env::var(ARCH_ENV).unwrap_or_default();
        let raw = raw.trim();
        if raw.is_empty() {
            return DEFAULT_ARCH.to_string();
        }
        let num = raw.strip_prefix("sm_").unwrap_or(raw);
        let digits = num.trim_end_matches(|c: char| c.is_ascii_lowercase());
        if digits.len() < 2
            || !digits.chars().all(|c| c.is_ascii_digit())
            || num.len() - digits.len() > 1
        {
            panic!(
                "{ARCH_ENV}={raw:?}: expected a real GPU architecture such as sm_90, sm_90a or 120"
            );
        }
        format!("sm_{num}")
    }

    /// Compiles every kernels/*.cu; returns NVRTC's version and the units, or why not.
    fn compile_all(root: &Path, out: &Path, arch: &str) -> Result<(String, Vec<Unit>), String> {
        // SAFETY: only tries to dlopen the library names cudarc would load.
        if !unsafe { sys::is_culib_present() } {
            return Err(String::from(
                "NVRTC not found (no libnvrtc.so / libnvrtc.so.13 on the library path). Install it with \
                 `pip install --target DIR nvidia-cuda-nvrtc==13.0.88` and put DIR/nvidia/cu13/lib \
                 on LD_LIBRARY_PATH (README, Developers; .ci/run does this)",
            ));
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: the library is present; two out-pointers to ints.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("nvrtcVersion: {e}"))?;
        let version = format!("{major}.{minor}");

        let gen_dir = out.join("nvrtc");
        fs::create_dir_all(&gen_dir).unwrap();
        let sources = files_with_extension(&root.join("kernels"), "cu");
        let virtual_arch = arch.replacen("sm_", "compute_", 1);
        // Every header a kernel may include, for the cache key: a .cu is recompiled when it, any
        // header, the options or NVRTC change. (The build script reruns for the sanitizer and
        // FMA builds of the emulator too, with the same OUT_DIR: those reuse these outputs.)
        let mut header_bytes = Vec::new();
        for h in &files_with_extension(&root.join("kernels"), "cuh") {
            header_bytes.extend_from_slice(h.file_name().unwrap().as_encoded_bytes());
            header_bytes.extend_from_slice(&fs::read(h).unwrap());
        }
        let mut units = Vec::new();
        let mut errors = String::new();
        // One NVRTC program per file and output, compiled on as many threads as cargo gives this
        // build (NUM_JOBS; NVRTC compiles distinct programs concurrently), in file order after.
        let compile_file = |path: &PathBuf| {
            let file = path.file_name().unwrap().to_str().unwrap();
            let shown = format!("kernels/{file}");
            let src = fs::read_to_string(path).unwrap();
            let cubin_opts = [
                format!("--gpu-architecture={arch}"),
                "--ptxas-options=-v".to_string(),
            ];
            let ptx_opts = [format!("--gpu-architecture={virtual_arch}")];
            let key = cache_key(&[
                src.as_bytes(),
                &header_bytes,
                COMMON_OPTIONS.join(" ").as_bytes(),
                cubin_opts.join(" ").as_bytes(),
                ptx_opts.join(" ").as_bytes(),
                version.as_bytes(),
            ]);
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let cached = |name: String| fs::read(gen_dir.join(name)).ok();
            if cached(format!("{stem}.{arch}.key")).as_deref() == Some(key.as_bytes()) {
                if let (Some(cubin), Some(ptx), Some(log)) = (
                    cached(format!("{stem}.{arch}.cubin")),
                    cached(format!("{stem}.{virtual_arch}.ptx")),
                    cached(format!("{stem}.{arch}.log")),
                ) {
                    let log = String::from_utf8_lossy(&log).into_owned();
                    return (key, true, (Ok((cubin, log)), Ok((ptx, String::new()))));
                }
            }
            let cubin = compile(&src, &shown, &cubin_opts, Output::Cubin);
            let ptx = compile(&src, &shown, &ptx_opts, Output::Ptx);
            (key, false, (cubin, ptx))
        };
        let jobs = env::var("NUM_JOBS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .clamp(1, sources.len().max(1));
        let mut compiled: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..jobs)
                .map(|w| {
                    let mine: Vec<(usize, &PathBuf)> =
                        sources.iter().enumerate().skip(w).step_by(jobs).collect();
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|(i, p)| (i, compile_file(p)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|h| h.join().expect("an NVRTC compile thread panicked"))
                .collect()
        });
        compiled.sort_by_key(|(i, _)| *i);
        // Which files came from the cache (for whoever wonders why a build was quick).
        let mut cache_report = String::new();
        for (path, (_, (key, hit, (cubin, ptx)))) in sources.iter().zip(compiled) {
            let file = path.file_name().unwrap().to_str().unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let shown = format!("kernels/{file}");
            match (cubin, ptx) {
                (Ok((cubin, log)), Ok((ptx, _))) => {
                    for line in log.lines().filter(|l| l.contains("warning")) {
                        println!("cargo:warning={shown} (NVRTC): {line}");
                    }
                    let unit = Unit {
                        cubin: gen_dir.join(format!("{stem}.{arch}.cubin")),
                        ptx: gen_dir.join(format!("{stem}.{virtual_arch}.ptx")),
                        log: gen_dir.join(format!("{stem}.{arch}.log")),
                        shown,
                    };
                    fs::write(&unit.cubin, cubin).unwrap();
                    fs::write(&unit.ptx, ptx).unwrap();
                    fs::write(&unit.log, log).unwrap();
                    fs::write(gen_dir.join(format!("{stem}.{arch}.key")), &key).unwrap();
                    let how = if hit { "cached" } else { "compiled" };
                    writeln!(cache_report, "{} {arch} {key} {how}", unit.shown).unwrap();
                    units.push(unit);
                }
                (Err(e), _) | (_, Err(e)) => errors.push_str(&e),
            }
        }
        fs::write(gen_dir.join("cache.txt"), cache_report).unwrap();
        if !errors.is_empty() {
            return Err(format!(
                "NVRTC {version} could not compile the kernels for {arch}:\n{errors}"
            ));
        }
        Ok((version, units))
    }

    /// The files of `dir` ending in `.ext`, sorted.
    fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        files
    }

    /// FNV-1a (64 bit) over the parts, each followed by its length: a stable cache key.
    fn cache_key(parts: &[&[u8]]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            for &b in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    #[derive(Clone, Copy)]
    enum Output {
        Cubin,
        Ptx,
    }

    /// One NVRTC compile of one file: (code, log), or the log on failure.
    fn compile(
        src: &str,
        shown: &str,
        opts: &[String],
        what: Output,
    ) -> Result<(Vec<u8>, String), String> {
        let c_src = CString::new(src).map_err(|_| format!("{shown}: contains a NUL byte\n"))?;
        let c_name = CString::new(shown).unwrap();
        let prog = result::create_program(&c_src, Some(&c_name))
            .map_err(|e| format!("{shown}: nvrtcCreateProgram: {e}\n"))?;
        let options: Vec<String> = COMMON_OPTIONS
            .iter()
            .map(|s| s.to_string())
            .chain(opts.iter().cloned())
            .collect();
        // SAFETY: `prog` was just created and is destroyed once, below; c_src and c_name outlive it.
        let compiled = unsafe { result::compile_program(prog, &options) };
        let log = unsafe { result::get_program_log(prog) }
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let code = compiled
            .map_err(|e| format!("{shown} ({}): {e}\n{log}\n", options.join(" ")))
            .and_then(|()| match what {
                Output::Ptx => unsafe { result::get_ptx(prog) }
                    .map(|p| c_chars_to_string(&p).into_bytes())
                    .map_err(|e| format!("{shown}: nvrtcGetPTX: {e}\n")),
                Output::Cubin => {
                    unsafe { get_cubin(prog) }.map_err(|e| format!("{shown}: nvrtcGetCUBIN: {e}\n"))
                }
            });
        unsafe { result::destroy_program(prog) }.ok();
        code.map(|c| (c, log))
    }

    /// cudarc 0.19's result module has no CUBIN getter.
    ///
    /// SAFETY: `prog` is a live, successfully compiled program.
    unsafe fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
        let mut size = 0usize;
        sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
        let mut cubin = vec![0u8; size];
        sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char).result()?;
        Ok(cubin)
    }

    /// NVRTC's strings come NUL-terminated.
    fn c_chars_to_string(chars: &[c_char]) -> String {
        let bytes: Vec<u8> = chars
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn compiled_table(arch: &str, version: &str, units: &[Unit]) -> String {
        let mut s = format!(
            "// @generated by build.rs (module nvrtc) from kernels/*.cu.\n\n\
             pub const COMPILED: bool = true;\n\
             pub const NOT_COMPILED_REASON: &str = \"\";\n\
             pub const ARCH: &str = {arch:?};\n\
             pub const NVRTC_VERSION: &str = {version:?};\n\n\
             pub static MODULES: &[CudaModule] = &[\n"
        );
        for u in units {
            writeln!(
                s,
                "    CudaModule {{ source: {:?}, cubin: include_bytes!({:?}), ptx: include_str!({:?}), ptxas_log: include_str!({:?}) }},",
                u.shown,
                u.cubin.to_str().unwrap(),
                u.ptx.to_str().unwrap(),
                u.log.to_str().unwrap()
            )
            .unwrap();
        }
        s.push_str("];\n");
        s
    }

    fn not_compiled_table(arch: &str, why: &str) -> String {
        format!(
            "// @generated by build.rs (module nvrtc): the CUDA kernels were not compiled.\n\n\
             pub const COMPILED: bool = false;\n\
             pub const NOT_COMPILED_REASON: &str = {why:?};\n\
             pub const ARCH: &str = {arch:?};\n\
             pub const NVRTC_VERSION: &str = \"\";\n\n\
             pub static MODULES: &[CudaModule] = &[];\n"
        )
    }
}

mod emu {
    use std::collections::BTreeMap;
    use std::env;
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// `-D__global__=MARKER` during discovery: every kernel, macro-generated ones too, shows up
    /// in the preprocessed source as MARKER.
    const MARKER: &str = "__robo_poet_emu_kernel__";
    const SANITIZE_ENV: &str = "ROBO_POET_EMU_SANITIZE";
    /// `1`: compile the emulated kernels with FMA contraction (`-mfma -ffp-contract=fast`), as
    /// NVRTC does by default (`--fmad=true`), to see the GPU's rounding drift on the CPU
    /// (docs/KERNEL_BENCH.md, "Rounding").
    const FMA_ENV: &str = "ROBO_POET_EMU_FMA";

    /// One static library of emulated kernels and its Rust lookup table.
    struct Library {
        /// Library name; also the prefix of its launcher symbols.
        name: &'static str,
        /// Folder of .cu files (and .cuh headers they include), relative to the crate root.
        dir: &'static str,
        /// Generated Rust table, in OUT_DIR.
        table: &'static str,
        /// Another library (built before this one) whose headers its files may include too, as
        /// the test kernels include kernels/grid.cuh.
        headers_of: Option<&'static str>,
    }

    const LIBRARIES: [Library; 2] = [
        Library {
            name: "robo_poet_emu_kernels",
            dir: "kernels",
            table: "emu_kernels.rs",
            headers_of: None,
        },
        Library {
            name: "robo_poet_emu_test_kernels",
            dir: "tests/kernels",
            table: "emu_test_kernels.rs",
            headers_of: Some("robo_poet_emu_kernels"),
        },
    ];

    pub fn build() {
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        println!("cargo:rerun-if-env-changed={SANITIZE_ENV}");
        println!("cargo:rerun-if-changed=kernels");
        println!("cargo:rerun-if-changed=tests/kernels");
        println!("cargo::rustc-check-cfg=cfg(emu_sanitize, values(\"address\", \"thread\"))");
        println!("cargo:rerun-if-env-changed={FMA_ENV}");
        println!("cargo::rustc-check-cfg=cfg(emu_fma)");

        let sanitize = env::var(SANITIZE_ENV).unwrap_or_default();
        let (sanitizer_flags, runtimes): (&[&str], &[&str]) = match sanitize.as_str() {
            "" | "none" => (&[], &[]),
            "address" => (
                &[
                    "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined",
                    "-fno-omit-frame-pointer",
                ],
                &["asan", "ubsan"],
            ),
            "thread" => (&["-fsanitize=thread"], &["tsan"]),
            other => panic!(
                "{SANITIZE_ENV}={other:?}: expected `address` (ASan + UBSan) or `thread` (TSan)"
            ),
        };
        if !sanitizer_flags.is_empty() {
            println!("cargo:rustc-cfg=emu_sanitize=\"{sanitize}\"");
            // rustc links with -nodefaultlibs, so the compiler driver adds no sanitizer runtime.
            // Named here, before the kernel libraries and libstdc++, the runtime comes first
            // among the program's shared libraries, where its interceptors must be.
            for rt in runtimes {
                println!("cargo:rustc-link-lib=dylib={rt}");
            }
        }

        let fma = match env::var(FMA_ENV).unwrap_or_default().as_str() {
            "" | "0" => false,
            "1" => true,
            other => panic!("{FMA_ENV}={other:?}: expected 1 (contract to FMA) or 0"),
        };
        let mut flags: Vec<&str> = sanitizer_flags.to_vec();
        if fma {
            // GCC contracts a*b+c only with -ffp-contract=fast (the ISO modes default to off),
            // only into the FMA instructions -mfma enables, and only from -O2 on (its
            // widening_mul pass; the dev profile builds C++ at -O1).
            flags.extend(["-mfma", "-ffp-contract=fast", "-O2"]);
            println!("cargo:rustc-cfg=emu_fma");
        }

        let header = root.join("kernels/emu/cuda_emu.h");
        let mut all_kernels: BTreeMap<String, String> = BTreeMap::new();
        for lib in &LIBRARIES {
            let kernels = compile_library(&root, &out, &header, lib, &flags);
            for (name, source) in &kernels {
                if let Some(first) = all_kernels.insert(name.clone(), source.clone()) {
                    panic!("kernel `{name}` is defined in both {first} and {source}: kernel names must be unique");
                }
            }
            fs::write(out.join(lib.table), rust_table(lib, &kernels)).unwrap();
        }
    }

    /// Rewrites, discovers and compiles one folder of kernels; returns (kernel, source file).
    fn compile_library(
        root: &Path,
        out: &Path,
        header: &Path,
        lib: &Library,
        extra_flags: &[&str],
    ) -> Vec<(String, String)> {
        let src_dir = root.join(lib.dir);
        let gen_dir = out.join("emu").join(lib.name);
        fs::create_dir_all(&gen_dir).unwrap();
        let mut units = Vec::new();
        for entry in fs::read_dir(&src_dir).unwrap_or_else(|e| panic!("{}: {e}", src_dir.display()))
        {
            let path = entry.unwrap().path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "cu" && ext != "cuh" {
                continue;
            }
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let shown = format!("{}/{file}", lib.dir);
            let text = fs::read_to_string(&path).unwrap();
            let rewritten = rewrite_shared(&text, &shown).unwrap_or_else(|e| panic!("{e}"));
            let rewritten = rewrite_vector_casts(&rewritten);
            // #line keeps file:line in reports (source_location) pointing at the real source.
            let body = format!("#line 1 \"{shown}\"\n{rewritten}");
            if ext == "cuh" {
                fs::write(gen_dir.join(&file), body).unwrap();
            } else {
                units.push((file, shown, body));
            }
        }
        units.sort();
        // the other library's rewritten headers (its gen dir), after this library's own
        let other_headers = lib.headers_of.map(|name| out.join("emu").join(name));

        let base = || {
            let mut b = cc::Build::new();
            b.cpp(true)
                .std("c++20")
                .flag("-include")
                .flag(header.to_str().unwrap())
                .include(&gen_dir)
                .include(&src_dir)
                .includes(&other_headers)
                // CUDA code reinterprets freely (float4 loads of float arrays)
                .flag("-fno-strict-aliasing")
                .flag("-pthread")
                // `#pragma unroll` is nvcc's; the host compiler has no use for it
                .flag("-Wno-unknown-pragmas")
                .warnings(true)
                .extra_warnings(true);
            b
        };

        let mut kernels = Vec::new();
        let mut cpps = Vec::new();
        let mut build = base();
        for f in extra_flags {
            build.flag(f);
        }
        for (file, shown, body) in &units {
            let stage = gen_dir.join(format!("{file}.discover.cpp"));
            fs::write(&stage, body).unwrap();
            let expanded = base()
                .define("ROBO_POET_EMU_DISCOVERY", None)
                .define("__global__", Some(MARKER))
                .file(&stage)
                .try_expand()
                .unwrap_or_else(|e| {
                    panic!("preprocessing {shown} to find its kernels failed: {e}")
                });
            let names = find_kernels(&String::from_utf8_lossy(&expanded), shown);
            let mut unit = body.clone();
            unit.push_str(
                "\n// ---- added by build.rs: one emulated launcher per __global__ function\n",
            );
            for name in &names {
                writeln!(
                    unit,
                    "extern \"C\" int {}_launch_{name}(::emu::LaunchDesc* d) noexcept {{ return ::emu::launch(&{name}, \"{name}\", d); }}",
                    lib.name
                )
                .unwrap();
                kernels.push((name.clone(), shown.clone()));
            }
            let cpp = gen_dir.join(format!("{file}.cpp"));
            fs::write(&cpp, unit).unwrap();
            cpps.push(cpp);
        }
        // The units are large (the emulator's headers in each): compile them on as many threads
        // as cargo gives this build (NUM_JOBS), then archive the objects in one library.
        let jobs = env::var("NUM_JOBS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .clamp(1, cpps.len().max(1));
        let objects: Vec<PathBuf> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..jobs)
                .map(|w| {
                    let mut b = build.clone();
                    for cpp in cpps.iter().skip(w).step_by(jobs) {
                        b.file(cpp);
                    }
                    s.spawn(move || b.compile_intermediates())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("compiling {}", lib.name))
                })
                .collect()
        });
        build.objects(&objects);
        build.compile(lib.name);
        kernels
    }

    fn rust_table(lib: &Library, kernels: &[(String, String)]) -> String {
        let mut s = format!(
            "// @generated by build.rs from {}/*.cu: kernel name -> emulated launcher.\n\nunsafe extern \"C\" {{\n",
            lib.dir
        );
        for (name, _) in kernels {
            writeln!(
                s,
                "    fn {}_launch_{name}(desc: *mut EmuLaunchDesc) -> i32;",
                lib.name
            )
            .unwrap();
        }
        s.push_str("}\n\npub static KERNELS: &[EmuKernel] = &[\n");
        for (name, source) in kernels {
            writeln!(
                s,
                "    EmuKernel {{ name: \"{name}\", source: \"{source}\", launch: {}_launch_{name} }},",
                lib.name
            )
            .unwrap();
        }
        s.push_str("];\n");
        s
    }

    // ------------------------------------------------------------------------------------------
    // A small C++ tokenizer: enough to find kernels and rewrite shared-memory declarations.

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Kind {
        Ident,
        Punct,
        Other,
    }

    #[derive(Clone, Copy, Debug)]
    struct Tok {
        kind: Kind,
        start: usize,
        end: usize,
    }

    /// Tokens outside comments, string and character literals; `#` lines are kept (macro bodies
    /// may declare shared memory) unless `skip_directives`.
    fn tokenize(src: &str, skip_directives: bool) -> Vec<Tok> {
        let b = src.as_bytes();
        let mut toks = Vec::new();
        let mut i = 0;
        let mut line_start = true;
        while i < b.len() {
            let c = b[i];
            if c == b'\n' {
                line_start = true;
                i += 1;
            } else if c.is_ascii_whitespace() {
                i += 1;
            } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            } else if c == b'#' && line_start && skip_directives {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            } else if c == b'"' || c == b'\'' {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                toks.push(Tok {
                    kind: Kind::Other,
                    start,
                    end: i.min(b.len()),
                });
                line_start = false;
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                toks.push(Tok {
                    kind: Kind::Ident,
                    start,
                    end: i,
                });
                line_start = false;
            } else if c.is_ascii_digit() {
                let start = i;
                // digits, suffixes, exponents, and C++14 digit separators (1'000)
                let in_number = |i: usize| {
                    b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || (b[i] == b'\''
                            && b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()))
                };
                while i < b.len() && in_number(i) {
                    i += 1;
                }
                toks.push(Tok {
                    kind: Kind::Other,
                    start,
                    end: i,
                });
                line_start = false;
            } else {
                toks.push(Tok {
                    kind: Kind::Punct,
                    start: i,
                    end: i + 1,
                });
                line_start = false;
                i += 1;
            }
        }
        toks
    }

    /// Names of the functions that follow the discovery marker, in order, without repeats.
    /// Panics naming `shown` if a kernel lacks C linkage: the CUDA driver looks kernels up by
    /// their unmangled names, so a kernel without `extern "C"` would work here and not there.
    fn find_kernels(expanded: &str, shown: &str) -> Vec<String> {
        let toks = tokenize(expanded, true);
        let text = |t: &Tok| &expanded[t.start..t.end];
        let after_extern_c =
            |k: usize| k >= 2 && text(&toks[k - 2]) == "extern" && text(&toks[k - 1]) == "\"C\"";
        let mut names: Vec<String> = Vec::new();
        let mut braces: Vec<bool> = Vec::new(); // open braces; true for `extern "C" {`
        for (k, t) in toks.iter().enumerate() {
            match text(t) {
                "{" => braces.push(after_extern_c(k)),
                "}" => {
                    braces.pop();
                }
                _ => {}
            }
            if t.kind != Kind::Ident || text(t) != MARKER {
                continue;
            }
            // `MARKER void [attributes] name (`: the identifier right before the first `(`.
            let mut j = k + 1;
            while j < toks.len() && text(&toks[j]) != "(" && text(&toks[j]) != ";" {
                j += 1;
            }
            if j < toks.len()
                && text(&toks[j]) == "("
                && toks[j - 1].kind == Kind::Ident
                && j > k + 1
            {
                let name = text(&toks[j - 1]).to_string();
                if !after_extern_c(k) && !braces.contains(&true) {
                    panic!(
                        "{shown}: kernel `{name}` must be declared `extern \"C\" __global__`: the CUDA \
                         driver finds kernels by their unmangled names"
                    );
                }
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    fn line_of(src: &str, pos: usize) -> usize {
        src[..pos].matches('\n').count() + 1
    }

    /// CUDA's vector types: a load or store through a pointer to one is a single vector access
    /// (ld/st .v2 or .v4), which the hardware faults on unless the address is aligned to the
    /// vector's size.
    const VECTOR_TYPES: [&str; 7] = [
        "float2", "float4", "int2", "int4", "uint2", "uint4", "double2",
    ];

    /// Rewrites `reinterpret_cast<V*>(p)` with V a CUDA vector type (const or not) into
    /// `::emu::vector_cast<V*>(p)`, which refuses a misaligned address as the hardware's vector
    /// access would (kernels/emu/cuda_emu.h); other casts are left alone. Same length in lines.
    fn rewrite_vector_casts(src: &str) -> String {
        let toks = tokenize(src, false);
        let text = |t: &Tok| &src[t.start..t.end];
        let mut out = String::with_capacity(src.len() + 256);
        let mut copied = 0;
        for (k, t) in toks.iter().enumerate() {
            if t.kind != Kind::Ident
                || text(t) != "reinterpret_cast"
                || toks.get(k + 1).map(text) != Some("<")
            {
                continue;
            }
            // the template argument: the tokens up to the matching '>'
            let mut depth = 0;
            let mut arg = Vec::new();
            for u in &toks[k + 1..] {
                match text(u) {
                    "<" => depth += 1,
                    ">" => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                arg.push(text(u));
            }
            let is_vector_pointer = arg.last() == Some(&"*")
                && arg.iter().filter(|a| **a == "*").count() == 1
                && arg.iter().any(|a| VECTOR_TYPES.contains(a));
            if is_vector_pointer {
                out.push_str(&src[copied..t.start]);
                out.push_str("::emu::vector_cast");
                copied = t.end;
            }
        }
        out.push_str(&src[copied..]);
        out
    }

    /// Rewrites shared-memory declarations, which no macro can turn into per-block storage:
    ///   `__shared__ T name[dims];`        → a static key plus a reference to the block's copy
    ///   `extern __shared__ T name[];`     → a pointer to the launch's dynamic shared memory
    /// Line numbers are preserved.
    fn rewrite_shared(src: &str, shown: &str) -> Result<String, String> {
        let toks = tokenize(src, false);
        let text = |t: &Tok| &src[t.start..t.end];
        let mut out = String::with_capacity(src.len() + 1024);
        let mut copied = 0;
        for (k, t) in toks.iter().enumerate() {
            if t.kind != Kind::Ident || text(t) != "__shared__" {
                continue;
            }
            let err = |msg: &str| Err(format!("{shown}:{}: {msg}", line_of(src, t.start)));
            // qualifiers written before __shared__
            let mut first = k;
            let (mut is_extern, mut is_volatile) = (false, false);
            while first > 0 && matches!(text(&toks[first - 1]), "extern" | "static" | "volatile") {
                first -= 1;
                match text(&toks[first]) {
                    "extern" => is_extern = true,
                    "volatile" => is_volatile = true,
                    _ => {}
                }
            }
            // the declaration up to `;`, without alignment attributes (shared memory is always
            // 128-byte aligned in the emulator)
            let mut decl: Vec<&str> = Vec::new();
            let mut j = k + 1;
            let mut depth = 0i32;
            loop {
                let Some(tok) = toks.get(j) else {
                    return err("unterminated __shared__ declaration");
                };
                let s = text(tok);
                if depth == 0 && s == ";" {
                    break;
                }
                if depth == 0 && matches!(s, "__align__" | "alignas" | "__attribute__") {
                    // skip the attribute's balanced parentheses
                    j += 1;
                    let mut d = 0;
                    while let Some(tok) = toks.get(j) {
                        match text(tok) {
                            "(" => d += 1,
                            ")" => d -= 1,
                            _ => {}
                        }
                        j += 1;
                        if d == 0 {
                            break;
                        }
                    }
                    continue;
                }
                match s {
                    "(" | "[" | "{" | "<" => depth += 1,
                    ")" | "]" | "}" | ">" => depth -= 1,
                    "=" if depth == 0 => {
                        return err("__shared__ variables cannot have an initializer")
                    }
                    "," if depth == 0 => {
                        return err("declare one __shared__ variable per statement")
                    }
                    _ => {}
                }
                decl.push(s);
                j += 1;
            }
            let semicolon = toks[j];
            // trailing [..] groups are the array dimensions; the identifier before them the name
            let mut dims_start = decl.len();
            while dims_start > 0 && decl[dims_start - 1] == "]" {
                let mut d = 0;
                loop {
                    dims_start -= 1;
                    match decl[dims_start] {
                        "]" => d += 1,
                        "[" => d -= 1,
                        _ => {}
                    }
                    if d == 0 {
                        break;
                    }
                }
            }
            if dims_start < 2 {
                return err("cannot parse this __shared__ declaration (expected `__shared__ TYPE NAME[DIMS];`)");
            }
            let name = decl[dims_start - 1];
            let mut ty = decl[..dims_start - 1].join(" ");
            if is_volatile {
                ty = format!("volatile {ty}");
            }
            let dims = decl[dims_start..].join("");
            let replacement = if is_extern {
                if dims != "[]" {
                    return err("extern __shared__ must be a one-dimensional array of unknown size: `T name[];`");
                }
                format!("{ty}* const {name} = static_cast<{ty}*>(::emu::dynamic_shared(std::source_location::current()));")
            } else {
                format!(
                    "static ::emu::SharedDecl<{ty}{dims}> robo_poet_emu_shared_{name}; auto& {name} = robo_poet_emu_shared_{name}.get();"
                )
            };
            let span_start = toks[first].start;
            out.push_str(&src[copied..span_start]);
            out.push_str(&replacement);
            // keep the line count, and line continuations inside macro bodies
            let span = &src[span_start..semicolon.end];
            let sb = span.as_bytes();
            for (p, &c) in sb.iter().enumerate() {
                if c == b'\n' {
                    out.push_str(if p > 0 && sb[p - 1] == b'\\' {
                        " \\\n"
                    } else {
                        "\n"
                    });
                }
            }
            copied = semicolon.end;
        }
        out.push_str(&src[copied..]);
        Ok(out)
    }
}
