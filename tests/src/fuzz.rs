//! A small mutation fuzzer for the stable toolchain: each target is a `fn(&[u8])` that must
//! neither panic nor hang on any input. Inputs start from a seed corpus committed in the repo
//! (`tests/fuzz/corpus/<target>/`) and are mutated (bit flips, interesting bytes and integers,
//! insertions, deletions, duplications, splices with other seeds, dictionary tokens) for a
//! wall-time budget per target:
//!
//! * `EDGEFUSE_FUZZ_SECS`: seconds per target (default 20; 3 under emulation, where
//!   `EDGEFUSE_TEST_EMULATED` is set);
//! * `EDGEFUSE_FUZZ_SEED`: the random seed (default: from the clock; printed, to replay a run).
//!
//! A panic is a crash; an input running longer than [`HANG`] aborts the process after printing
//! it (a hang). Each crashing input is written to `target/fuzz-crashes/<target>-<n>.bin` and
//! printed (escaped); the caller fails when [`Report::crashes`] is not empty. Allocation caps are
//! the caller's (the `fuzz` test binary's global allocator, see [`over_cap`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest an input may run before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(10);

/// Set by an allocator when one allocation exceeds its cap; a target's input that sets it is a
/// crash ("allocation above the cap").
pub static OVER_CAP: AtomicBool = AtomicBool::new(false);
/// The size of the allocation that set [`OVER_CAP`].
pub static OVER_CAP_BYTES: AtomicU64 = AtomicU64::new(0);

/// For a global allocator: record an allocation of `size` bytes over `cap`. Returns whether it
/// is over.
pub fn over_cap(size: usize, cap: usize) -> bool {
    if size > cap {
        OVER_CAP.store(true, Ordering::Relaxed);
        OVER_CAP_BYTES.store(size as u64, Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// What one target's run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Target name.
    pub name: String,
    /// Inputs executed (seeds included).
    pub execs: u64,
    /// Seeds read from the corpus.
    pub seeds: usize,
    /// Crashing inputs: where each was saved and why it crashed.
    pub crashes: Vec<(PathBuf, String)>,
}

/// Seconds per target from `EDGEFUSE_FUZZ_SECS` (default 20, 3 under emulation).
pub fn budget() -> Duration {
    let default = if std::env::var_os("EDGEFUSE_TEST_EMULATED").is_some() {
        3.0
    } else {
        20.0
    };
    let secs = std::env::var("EDGEFUSE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(secs)
}

/// The seed of the random mutations: `EDGEFUSE_FUZZ_SEED` or the clock.
pub fn seed() -> u64 {
    std::env::var("EDGEFUSE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e400",
    b"-0",
    b"nan",
    b"inf",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"9223372036854775807",
    b"0.0000000001",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\n",
    b"\x1b[",
    b"%",
    b"%ff",
    b"?",
    b"&",
    b"=",
    b",",
    b":",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
];

/// The seed corpus of `target`: every file of `dir` (an empty input when there is none).
pub fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    seeds
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&[u8]], max: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = [0u8, 0xff, 0x7f, 0x80, b'9', b' ', rng.next() as u8][rng.below(7)];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            4 | 5 => {
                let words: &[u8] = if !dict.is_empty() && rng.below(2) == 0 {
                    dict[rng.below(dict.len())]
                } else {
                    INTERESTING[rng.below(INTERESTING.len())]
                };
                let at = rng.below(len + 1);
                if rng.below(2) == 0 && at < len {
                    let end = (at + words.len()).min(len);
                    input.splice(at..end, words.iter().copied());
                } else {
                    input.splice(at..at, words.iter().copied());
                }
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - from);
                    let at = rng.below(len + 1);
                    input.truncate(at);
                    input.extend_from_slice(&other[from..from + n]);
                }
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            8 if len > 0 => {
                // Replace a run of ASCII digits with a boundary integer.
                let i = rng.below(len);
                if input[i].is_ascii_digit() {
                    let mut j = i;
                    while j < len && input[j].is_ascii_digit() {
                        j += 1;
                    }
                    let w = INTERESTING[4 + rng.below(6)];
                    input.splice(i..j, w.iter().copied());
                }
            }
            _ => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next() as u8);
            }
        }
    }
    input.truncate(max);
}

/// Printable form of an input for a report: ASCII as it is, other bytes as `\xNN`.
pub fn escape(input: &[u8]) -> String {
    input
        .iter()
        .take(600)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Run `target` on the corpus of `name` and on mutations of it for [`budget`], inputs at most
/// `max_input` bytes. `dict` adds target-specific tokens to the mutations.
pub fn run(name: &str, dict: &[&[u8]], max_input: usize, target: fn(&[u8])) -> Report {
    let seeds = corpus(&crate::repo().join("tests/fuzz/corpus").join(name));
    run_seeds(name, &seeds, dict, max_input, budget(), target)
}

/// [`run`] from given seeds for a given time.
pub fn run_seeds(
    name: &str,
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    max_input: usize,
    budget: Duration,
    target: fn(&[u8]),
) -> Report {
    let mut report = Report {
        name: name.to_string(),
        seeds: seeds.len(),
        ..Report::default()
    };
    let seed = seed();
    let mut rng = Rng(seed);
    let crash_dir = crate::repo().join("target/fuzz-crashes");

    // The watchdog: an input running past HANG is printed and the process aborted.
    let current: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let started_ms = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let watchdog = {
        let (current, started_ms, done) = (current.clone(), started_ms.clone(), done.clone());
        let (name, crash_dir) = (name.to_string(), crash_dir.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let s = started_ms.load(Ordering::Relaxed);
                let now = clock.elapsed().as_millis() as u64;
                if s != 0 && now.saturating_sub(s) > HANG.as_millis() as u64 {
                    let input = current
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let _ = std::fs::create_dir_all(&crash_dir);
                    let path = crash_dir.join(format!("{name}-hang.bin"));
                    let _ = std::fs::write(&path, &input);
                    eprintln!(
                        "fuzz {name}: HANG (> {HANG:?}) on input saved as {} (seed {seed}): \"{}\"",
                        path.display(),
                        escape(&input)
                    );
                    std::process::abort();
                }
            }
        })
    };

    let last_panic: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let previous_hook = std::panic::take_hook();
    {
        let last_panic = last_panic.clone();
        std::panic::set_hook(Box::new(move |info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            *last_panic.lock().unwrap_or_else(PoisonError::into_inner) =
                format!("panic{at}: {msg}");
        }));
    }

    let t0 = Instant::now();
    let mut input = Vec::with_capacity(max_input);
    let mut i = 0usize;
    loop {
        if i >= seeds.len() && t0.elapsed() >= budget {
            break;
        }
        input.clear();
        if i < seeds.len() {
            input.extend_from_slice(&seeds[i][..seeds[i].len().min(max_input)]);
        } else {
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            mutate(&mut rng, &mut input, seeds, dict, max_input);
        }
        i += 1;
        current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&input);
        started_ms.store(clock.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        OVER_CAP.store(false, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        started_ms.store(0, Ordering::Relaxed);
        report.execs += 1;
        let why = match outcome {
            Err(_) => Some(
                last_panic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
            Ok(()) if OVER_CAP.load(Ordering::Relaxed) => Some(format!(
                "allocation of {} bytes, above the cap",
                OVER_CAP_BYTES.load(Ordering::Relaxed)
            )),
            Ok(()) => None,
        };
        if let Some(why) = why {
            // One report per distinct reason.
            if report.crashes.iter().any(|(_, w)| *w == why) {
                continue;
            }
            let _ = std::fs::create_dir_all(&crash_dir);
            let path = crash_dir.join(format!("{name}-{}.bin", report.crashes.len()));
            let _ = std::fs::write(&path, &input);
            eprintln!(
                "fuzz {name}: CRASH {why}\n  input saved as {} (seed {seed}): \"{}\"",
                path.display(),
                escape(&input)
            );
            report.crashes.push((path, why));
        }
    }
    std::panic::set_hook(previous_hook);
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    println!(
        "fuzz {name}: {} executions in {:.1} s ({} seeds, seed {seed}), {} crash(es)",
        report.execs,
        t0.elapsed().as_secs_f64(),
        report.seeds,
        report.crashes.len()
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_and_allocations_over_the_cap_are_found_and_reported_once_each() {
        fn target(data: &[u8]) {
            if data.len() > 12 {
                panic!("too long");
            }
            if data.first() == Some(&b'!') {
                over_cap(2, 1);
            }
        }
        let seeds = vec![b"0123456789".to_vec(), b"!".to_vec()];
        let r = run_seeds(
            "selftest",
            &seeds,
            &[],
            64,
            Duration::from_millis(500),
            target,
        );
        assert!(r.execs > 100, "{r:?}");
        let whys: Vec<&str> = r.crashes.iter().map(|(_, w)| w.as_str()).collect();
        assert!(whys.iter().any(|w| w.contains("too long")), "{whys:?}");
        assert!(whys.iter().any(|w| w.contains("above the cap")), "{whys:?}");
        assert_eq!(whys.len(), 2, "one report per reason: {whys:?}");
        for (p, _) in &r.crashes {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn mutations_stay_within_the_size_cap() {
        let mut rng = Rng(7);
        let seeds = vec![vec![b'a'; 100]];
        for _ in 0..1000 {
            let mut input = seeds[0].clone();
            mutate(&mut rng, &mut input, &seeds, &[b"xyz"], 120);
            assert!(input.len() <= 120);
        }
    }
}
