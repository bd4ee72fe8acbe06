//! The memory allocator: mimalloc, for every binary built on this crate.
//!
//! Chosen for idle clients: when thousands of them park (`proxy::park`), the memory
//! their tasks held is freed between live records. glibc's allocator keeps such
//! interleaved free memory resident (1.9 KiB per parked client at 10,000 clients,
//! measured with bench/run.sh); mimalloc keeps each size class on its own pages and
//! returns empty pages to the system (0.45 KiB). `no_thp` keeps its arenas off
//! transparent huge pages, which would hold whole 2 MiB pages resident.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the pages freed since the last call to the system now, rather than after
/// mimalloc's purge delay, which only passes when the allocator is next busy: an idle
/// proxy would keep them resident.
pub fn give_back_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and touches only mimalloc's own heap and
    // arenas, which are this process's allocator (the global allocator above).
    unsafe { libmimalloc_sys::mi_collect(true) }
}
