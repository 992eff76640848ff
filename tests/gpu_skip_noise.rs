//! Without a GPU, a test binary's skipped `gpu_` tests say so in one short line for the binary,
//! not a long line each (issue 16, item 10: dozens of ~400-character SKIPPED lines were the first
//! thing `cargo test` showed a new user). Three probe pairs stand in for the real ones.

mod common;

device_tests! {
    fn emu_skip_probe_a / gpu_skip_probe_a (dev) { let _ = &dev; }
    fn emu_skip_probe_b / gpu_skip_probe_b (dev) { let _ = &dev; }
    fn emu_skip_probe_c / gpu_skip_probe_c (dev) { let _ = &dev; }
}

#[test]
fn skipped_gpu_tests_say_why_once_per_binary_in_one_short_line() {
    if robo_poet::gpu::CudaDevice::open().is_ok() {
        return; // with a GPU nothing is skipped
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["gpu_skip_probe", "--test-threads", "3"])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("test result: ok. 3 passed"), "{all}");
    let skipped: Vec<&str> = all.lines().filter(|l| l.contains("SKIPPED")).collect();
    assert_eq!(skipped.len(), 1, "one line for the binary:\n{all}");
    let line = skipped[0];
    assert!(line.len() <= 120, "{} characters: {line}", line.len());
    assert!(line.contains("gpu_ tests"), "{line}");
}
