//! How the process's allocator is configured: how many glibc malloc arenas it may use.
//!
//! Owns: `limit_arenas`, called once at the start of `main` before any thread exists.
//! Why: glibc gives each thread that contends for the heap its own arena, up to 8 per
//! core, and memory freed in an arena stays in the process's RSS until that arena reuses
//! it. Timbala's work moves between tokio's workers and its blocking pool (a snapshot's
//! block writer, queries), so freed memory piles up in many arenas: at 100k series RSS
//! after a snapshot and a few dashboard queries was ~212 MiB, 1.8x the ingest peak, with
//! 4 arenas ~162 MiB, at a few percent of ingest CPU (2 arenas: ~141 MiB but ~15% CPU).
//! `malloc_trim(0)` after the large transient work freed too little to measure, and
//! after every query it cost ~1 ms (ADR 0025, amended; bench/RESULTS.md). An operator's
//! `MALLOC_ARENA_MAX` takes precedence. With other C libraries it does nothing.
//! Calls only libc.

/// Arenas glibc may create. Enough that tokio's two workers and the blocking pool rarely
/// wait on one another's allocations; few enough that freed memory is reused.
pub const MAX_ARENAS: i32 = 4;

/// Caps glibc's malloc arenas at `MAX_ARENAS` unless the environment sets
/// `MALLOC_ARENA_MAX`. Returns whether the cap was applied. Call it before spawning
/// threads: arenas already created stay.
pub fn limit_arenas() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    set_arena_max(MAX_ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt only sets a malloc parameter; M_ARENA_MAX accepts any positive value.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::set_arena_max;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_cap_and_keeps_allocating_across_threads() {
        assert!(set_arena_max(super::MAX_ARENAS));
        // More threads than arenas: they share arenas and their memory stays intact.
        let handles: Vec<_> = (0..16u8)
            .map(|i| {
                std::thread::spawn(move || {
                    let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![i; 16 * 1024]).collect();
                    blocks.iter().all(|b| b.iter().all(|&x| x == i))
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().expect("allocating thread"));
        }
    }
}
