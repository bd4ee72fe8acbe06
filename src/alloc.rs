//! The memory allocator: mimalloc, for every binary built on this crate.
//!
//! Chosen for idle clients: when thousands of them park (`proxy::park`), the memory
//! their tasks held is freed between live records. glibc's allocator keeps such
//! interleaved free memory resident (1.9 KiB per parked client at 10,000 clients,
//! measured with bench/run.sh); mimalloc keeps each size class on its own pages and
//! returns empty pages to the system (0.45 KiB). `no_thp` keeps its arenas off
//! transparent huge pages, which would hold whole 2 MiB pages resident.

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Unit tests count the allocations a thread makes, so that a test can say how many
/// a message costs on the hot path (a count, not a time).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// Returns the pages freed since the last call to the system now, rather than after
/// mimalloc's purge delay, which only passes when the allocator is next busy: an idle
/// proxy would keep them resident.
pub fn give_back_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and touches only mimalloc's own heap and
    // arenas, which are this process's allocator (the global allocator above).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
pub mod counting {
    use std::alloc::{GlobalAlloc, Layout};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: every call is passed to mimalloc unchanged; the count is a plain
    // thread-local Cell without a destructor, so counting never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    /// Allocations (and reallocations) this thread has made so far.
    pub fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}
