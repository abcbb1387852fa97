//! What the daemon does to its own process: before it holds a secret, no
//! core files and no ptrace or /proc/PID/mem reads by other processes of the
//! same user, so that a crash or a curious neighbour cannot copy the keys
//! out of its memory; and malloc settings that keep its memory small.

/// Makes the process non-dumpable and sets its core file limit to zero.
pub fn harden() -> std::io::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// Allocations this large and larger are mapped on their own and given
/// back to the system when freed.
const MMAP_THRESHOLD: i32 = 64 << 10;

/// Keeps the daemon's memory close to what it holds. glibc's default
/// threshold for mapping large allocations on their own rises to the size
/// of the largest block ever freed, after which big transient buffers (the
/// frame of a listing of thousands of authentications) come from the heap
/// and stay in the process's resident memory; a fixed threshold returns
/// them. Measured with 10,000 authentications: 40 MiB resident after a full
/// listing with the default, 30 MiB with this (BENCHMARKS.md).
///
/// And one malloc arena per core instead of glibc's eight: each connection
/// is served by a thread of its own, and threads come and go with
/// connections; with the default, new threads kept taking new arenas and
/// the resident memory crept up under a steady load (55 → 58 MiB in 20 s
/// with 64 clients and 10,000 authentications; 37 MiB and flat with one per
/// core).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: mallopt takes two integers and only changes a malloc
        // setting.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as i32);
        }
    }
}

/// Gives the allocator's free pages back to the system (glibc's
/// `malloc_trim`): called after a large reply is sent (a listing of
/// thousands), whose many small pieces, freed, would otherwise stay in the
/// process's resident memory between the blocks still in use. Measured
/// with 10,000 authentications: 1.1 MiB more resident after a full listing
/// without it (BENCHMARKS.md).
pub fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes an integer and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hardened_process_has_no_core_limit_and_is_not_dumpable() {
        // In a child, so that the test process keeps its own settings.
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "process::tests::child_half", "--nocapture"])
            .env("SNCTLD_PROCESS_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{}",
            String::from_utf8_lossy(&child.stdout)
        );
    }

    /// The half of the test above that runs in the child; alone, it does
    /// nothing.
    #[test]
    fn child_half() {
        if std::env::var_os("SNCTLD_PROCESS_CHILD").is_none() {
            return;
        }
        super::harden().unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    }
}
