//! Shared by the kernel test files: one test body run on two devices.

/// Each `fn emu_name / gpu_name (dev) { body }` defines two tests from one body, `dev` being the
/// device (pass `&dev` where a `&dyn Device` is wanted): `emu_name` on the emulated device
/// (`EmuDevice`), and `gpu_name` on the GPU (`CudaDevice`), which prints
/// `SKIPPED gpu_name: <why>` on stderr and returns when there is none. `cargo test emu` and
/// `cargo test gpu` select them.
#[macro_export]
macro_rules! device_tests {
    ($( $(#[$m:meta])* fn $emu:ident / $gpu:ident ($dev:ident) $body:block )*) => { $(
        $(#[$m])*
        #[test]
        fn $emu() {
            let $dev = robo_poet::gpu::EmuDevice::new();
            $body
        }

        $(#[$m])*
        #[test]
        fn $gpu() {
            match robo_poet::gpu::CudaDevice::open() {
                Ok($dev) => $body
                // straight to stderr: libtest captures eprintln! of passing tests
                Err(why) => {
                    use std::io::Write as _;
                    writeln!(std::io::stderr(), "SKIPPED {}: {why}", stringify!($gpu)).ok();
                }
            }
        }
    )* };
}
