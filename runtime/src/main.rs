//! `edgefuse`: the command-line front end. Parses, builds the pipeline, runs it, maps errors to
//! exit codes (0 success, 1 runtime error, 2 usage error).

mod cli;

use edgefuse_runtime::alloc::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn main() {
    std::process::exit(cli::main());
}
