//! Shared by the kernel test files: one test body run on two devices.

/// Each `fn emu_name / gpu_name (dev) { body }` defines two tests from one body, `dev` being a
/// `&dyn Device`: `emu_name` on the emulated device, and `gpu_name` on the GPU, which prints
/// `SKIPPED gpu_name: <why>` on stderr and returns when there is none. `cargo test emu` and
/// `cargo test gpu` select them.
#[macro_export]
macro_rules! device_tests {
    ($( $(#[$m:meta])* fn $emu:ident / $gpu:ident ($dev:ident) $body:block )*) => { $(
        $(#[$m])*
        #[test]
        fn $emu() {
            let d = robo_poet::gpu::EmuDevice::new();
            let $dev: &dyn robo_poet::gpu::Device = &d;
            $body
        }

        $(#[$m])*
        #[test]
        fn $gpu() {
            match robo_poet::gpu::CudaDevice::open() {
                Ok(d) => {
                    let $dev: &dyn robo_poet::gpu::Device = &d;
                    $body
                }
                Err(why) => eprintln!("SKIPPED {}: {why}", stringify!($gpu)),
            }
        }
    )* };
}
