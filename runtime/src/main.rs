//! `edgefuse`: the command-line front end. Parses, builds the pipeline, runs it, maps errors to
//! exit codes (0 success, 1 runtime error, 2 usage or configuration error).

mod cli;

use edgefuse_runtime::alloc::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Runs before `main` (and before the first allocation, whose counter may use LSE atomics):
/// a binary tuned for a newer CPU says so and exits 2 instead of dying with SIGILL.
extern "C" fn check_cpu() {
    let features = edgefuse_runtime::cpu::compiled_features();
    let mut err = std::io::stderr().lock();
    if let Ok(true) | Err(_) = edgefuse_runtime::cpu::write_mismatch(&features, &mut err) {
        // Exit 2 (configuration error): the service unit does not restart on it.
        std::process::exit(2);
    }
}

// SAFETY: `.init_array` entries are plain `extern "C" fn()` pointers that the C runtime calls
// once, single-threaded, before `main`; `check_cpu` touches no Rust runtime state that needs
// `main` to have started (it reads CPU feature flags and may print and exit).
#[used]
#[cfg_attr(target_os = "linux", link_section = ".init_array")]
static CHECK_CPU: extern "C" fn() = check_cpu;

fn main() {
    std::process::exit(cli::main());
}
