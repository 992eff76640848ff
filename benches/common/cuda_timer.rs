//! CUDA-event timing for the benches: cuEventRecord before and after the work on the legacy
//! default stream (where the CUDA backend launches everything), cuEventSynchronize on the second,
//! cuEventElapsedTime between them. The work is only queued between the two records, so the host
//! never waits inside the timed region (a copy back to the host would, and is not wanted there).

use cudarc::driver::{result, sys};
use std::time::Duration;

pub struct CudaTimer {
    start: sys::CUevent,
    stop: sys::CUevent,
}

impl CudaTimer {
    /// Two timing events in the current context (the one `CudaDevice::open` made current).
    pub fn new() -> Result<Self, String> {
        let ev = || {
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| format!("cuEventCreate: {e:?}"))
        };
        Ok(CudaTimer {
            start: ev()?,
            stop: ev()?,
        })
    }

    /// GPU time of the work `f` queues on the default stream.
    pub fn time(&self, f: impl FnOnce()) -> Result<Duration, String> {
        let stream: sys::CUstream = std::ptr::null_mut();
        // SAFETY: both events were created by `new` and live until Drop; the null stream is the
        // legacy default stream of the current context.
        unsafe {
            result::event::record(self.start, stream)
                .map_err(|e| format!("cuEventRecord: {e:?}"))?;
            f();
            result::event::record(self.stop, stream)
                .map_err(|e| format!("cuEventRecord: {e:?}"))?;
            result::event::synchronize(self.stop)
                .map_err(|e| format!("cuEventSynchronize: {e:?}"))?;
            let ms = result::event::elapsed(self.start, self.stop)
                .map_err(|e| format!("cuEventElapsedTime: {e:?}"))?;
            Ok(Duration::from_secs_f64(ms as f64 / 1e3))
        }
    }
}

impl Drop for CudaTimer {
    fn drop(&mut self) {
        // SAFETY: created by `new`, not used after this.
        unsafe {
            let _ = result::event::destroy(self.start);
            let _ = result::event::destroy(self.stop);
        }
    }
}
