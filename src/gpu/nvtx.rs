//! NVTX ranges (named spans on the Nsight Systems / Nsight Compute timeline) through the NVTX 3
//! interop library, loaded at run time; without it every call is a no-op.
//!
//! CUDA 13 no longer ships `libnvToolsExt.so` (what cudarc's `nvtx` feature loads): NVTX 3 is
//! header-only, and the one shared library that exports its C API as real symbols is
//! `libnvtx3interop.so.1` (CUDA's lib64, and the `nvidia-nvtx` pip wheel that PyTorch's CUDA
//! builds depend on). That library forwards each call to the tool that `NVTX_INJECTION64_PATH`
//! names (nsys and ncu set it for the process they profile) and does nothing otherwise.
//!
//! What was checked and what is assumed:
//! * checked (`nm -D` of libnvtx3interop.so.1 from the nvidia-nvtx 13.0.85 wheel): it exports
//!   `nvtxRangePushA` and `nvtxRangePop`, declared in that wheel's nvtx3/nvToolsExt.h as
//!   `int nvtxRangePushA(const char*)` and `int nvtxRangePop(void)`;
//! * assumed (no GPU machine with nsys seen yet): that nsys and ncu pick the ranges up through it.
//!   `robo-poet profile-step` prints whether the library was found.
//!
//! The library is looked for once, at the first call: `$ROBO_POET_NVTX_LIBRARY` (a path) if set,
//! then `libnvtx3interop.so` and `libnvtx3interop.so.1` on the library path. After that an absent
//! library costs one atomic load per call. Return values (the nesting level) are ignored, as NVTX
//! asks: some tools always return -1.

use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

/// Environment variable naming the NVTX library explicitly (e.g. a pip wheel's copy).
pub const LIBRARY_ENV: &str = "ROBO_POET_NVTX_LIBRARY";
/// Names tried on the library path when `LIBRARY_ENV` is unset.
pub const LIBRARY_NAMES: [&str; 2] = ["libnvtx3interop.so", "libnvtx3interop.so.1"];

type PushFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PopFn = unsafe extern "C" fn() -> c_int;

struct Nvtx {
    /// Which library answered (for messages).
    name: String,
    push: PushFn,
    pop: PopFn,
    /// Kept loaded for the program's lifetime: `push` and `pop` point into it.
    _lib: libloading::Library,
}

static NVTX: OnceLock<Result<Nvtx, String>> = OnceLock::new();

fn open(name: &str) -> Result<Nvtx, String> {
    // SAFETY: loading runs the library's initialisers; the NVTX interop library's only set up
    // function pointers. The symbols are looked up with their C signatures from nvToolsExt.h.
    unsafe {
        let lib = libloading::Library::new(name).map_err(|e| e.to_string())?;
        let push = *lib
            .get::<PushFn>(b"nvtxRangePushA\0")
            .map_err(|e| format!("{name}: {e}"))?;
        let pop = *lib
            .get::<PopFn>(b"nvtxRangePop\0")
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(Nvtx {
            name: name.to_string(),
            push,
            pop,
            _lib: lib,
        })
    }
}

fn load() -> Result<Nvtx, String> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV) {
        let path = path.to_string_lossy().into_owned();
        return open(&path).map_err(|e| {
            format!("{LIBRARY_ENV}={path}: {e} (point it at libnvtx3interop.so.1, or unset it)")
        });
    }
    let mut why = Vec::new();
    for name in LIBRARY_NAMES {
        match open(name) {
            Ok(n) => return Ok(n),
            Err(e) => why.push(e),
        }
    }
    Err(format!(
        "{} not found on the library path (it comes with the CUDA toolkit or `pip install nvidia-nvtx`; \
         or set {LIBRARY_ENV} to its path)",
        LIBRARY_NAMES.join(" / ")
    ))
}

fn get() -> Option<&'static Nvtx> {
    NVTX.get_or_init(load).as_ref().ok()
}

/// Where ranges went: `None` if nothing has used NVTX yet in this process (e.g. no GPU launch),
/// else `Ok(library)` or `Err(why it is off)`.
pub fn status() -> Option<Result<&'static str, &'static str>> {
    NVTX.get().map(|r| match r {
        Ok(n) => Ok(n.name.as_str()),
        Err(e) => Err(e.as_str()),
    })
}

/// Opens a range named `name` on this thread; close it with [`pop`]. A name holding a NUL byte
/// is cut there.
pub fn push(name: &str) {
    let Some(n) = get() else { return };
    let bytes = name.as_bytes();
    let cut = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let c = CString::new(&bytes[..cut]).expect("no NUL before the cut");
    // SAFETY: a NUL-terminated string alive during the call (NVTX copies what it keeps).
    unsafe {
        (n.push)(c.as_ptr());
    }
}

/// Closes the innermost range of this thread opened by [`push`].
pub fn pop() {
    if let Some(n) = get() {
        // SAFETY: no arguments; an unmatched pop is reported by the tool, not undefined.
        unsafe {
            (n.pop)();
        }
    }
}

/// A range closed when the guard is dropped.
#[must_use = "the range closes when this guard is dropped"]
pub struct Range(());

/// Opens a range that lasts until the returned guard is dropped.
pub fn range(name: &str) -> Range {
    push(name);
    Range(())
}

impl Drop for Range {
    fn drop(&mut self) {
        pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_harmless_with_or_without_the_library() {
        // Whatever this machine has, push/pop must neither fail nor panic, NUL bytes included.
        {
            let _r = range("outer");
            push("in\0ner");
            pop();
        }
        match status() {
            Some(Ok(lib)) => assert!(!lib.is_empty()),
            // (with $ROBO_POET_NVTX_LIBRARY set to a bad path, the message names that variable)
            Some(Err(why)) => assert!(why.contains("libnvtx3interop"), "{why}"),
            None => panic!("push was called, so the library was looked for"),
        }
    }
}
