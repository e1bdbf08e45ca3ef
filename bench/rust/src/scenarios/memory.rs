//! Scenario 5: resident bytes per instance with 100 000 instances held by an endpointer
//! (`FixedInstancer` + `DefaultEndpointer`, the endpoint holding its instance). Freed memory
//! is returned to the OS (`malloc_trim`) before both readings, as the Go side calls
//! `debug.FreeOSMemory`.

use sd_core::{DefaultEndpointer, Endpointer, FixedInstancer};

use super::{current_thread, factory, instances};
use crate::{alloc, Record};

extern "C" {
    // glibc; returns free heap memory to the OS.
    fn malloc_trim(pad: usize) -> i32;
}

/// Returns freed heap memory to the OS (Go: `debug.FreeOSMemory`).
pub fn settle() {
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        malloc_trim(0);
    }
}

/// Resident set size in bytes, from /proc/self/statm (pages × 4 KiB).
pub fn rss() -> Result<i64, String> {
    let s = std::fs::read_to_string("/proc/self/statm").map_err(|e| format!("statm: {e}"))?;
    let pages: i64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("statm: unexpected {s:?}"))?;
    Ok(pages * 4096)
}

pub fn run() -> Result<(), String> {
    let n = 100_000;
    let rt = current_thread()?;
    let _guard = rt.enter();
    settle();
    let h0 = alloc::live_bytes();
    let r0 = rss()?;
    let instancer = FixedInstancer::new(instances(n));
    let ep = DefaultEndpointer::new(&instancer, factory);
    if ep.endpoints().get().map(|l| l.len()).unwrap_or(0) != n {
        return Err("endpointer does not hold every instance".into());
    }
    settle();
    let r1 = rss()?;
    let h1 = alloc::live_bytes();
    let mut rec = Record::new("memory", n, 1);
    rec.bytes_per_instance = Some((r1 - r0) as f64 / n as f64);
    rec.heap_bytes_per_instance = Some((h1 - h0) as f64 / n as f64);
    rec.emit();
    drop(ep);
    drop(instancer);
    Ok(())
}
