//! A fixed pool of worker threads, built once: [`Pool::run`] hands `tasks` indices to the caller
//! and the workers and returns when every task is done. Nothing is spawned and nothing is
//! allocated per call (the job is a borrowed closure; `Mutex`/`Condvar` are futexes on Linux), so
//! the executor can use every core inside a zero-allocation frame.
//!
//! Workers spin briefly after a job before sleeping, so the many short jobs of one frame (one per
//! matrix product) do not each pay a futex wake-up; between frames they sleep.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A job: called with (task index, worker index); worker 0 is the caller of [`Pool::run`].
type Job = dyn Fn(usize, usize) + Sync;

/// Spin iterations before a worker or the caller sleeps.
const SPIN: u32 = 1 << 11;

#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointer is only dereferenced between the publication of a job and the moment every
// worker has checked in for it, while `Pool::run` keeps the borrowed closure (which is `Sync`)
// alive on its stack.
unsafe impl Send for JobPtr {}

struct State {
    job: Option<JobPtr>,
    tasks: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    /// Bumped (under the lock) for every job.
    generation: AtomicU64,
    /// Next unclaimed task.
    next: AtomicUsize,
    /// Workers that have not yet finished the current job.
    active: AtomicUsize,
    /// A task panicked in a worker.
    panicked: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a job panicked; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Worker threads for the CPU executor.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

/// The cores this process may run on (`sched_getaffinity` and cgroup quotas, as the standard
/// library reads them); 1 when unknown.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Pool {
    /// A pool running jobs on `threads` threads in all (the caller plus `threads - 1` workers);
    /// 0 means [`available_threads`].
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = if threads == 0 {
            available_threads()
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                tasks: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(threads.saturating_sub(1));
        for id in 1..threads {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("edgefuse-cpu-{id}"))
                .spawn(move || worker(&s, id))?;
            workers.push(handle);
        }
        Ok(Self { shared, workers })
    }

    /// Threads that run a job (the caller included).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `job(task, worker)` for every task in `0..tasks` across the pool; returns when all
    /// are done. Tasks are claimed dynamically; `worker < threads()` identifies per-thread
    /// scratch. Panics (after every worker has finished) if a task panicked in a worker.
    pub fn run(&self, tasks: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        if self.workers.is_empty() || tasks <= 1 {
            for t in 0..tasks {
                job(t, 0);
            }
            return;
        }
        let s = &*self.shared;
        // SAFETY: erases the closure's lifetime only; this function does not return before every
        // worker has checked in for this job (the `active` wait below), so no worker uses the
        // pointer after the borrow ends.
        let ptr: *const Job = unsafe { std::mem::transmute(job as *const _) };
        {
            let mut st = s.lock();
            st.job = Some(JobPtr(ptr));
            st.tasks = tasks;
            s.next.store(0, Ordering::Relaxed);
            s.active.store(self.workers.len(), Ordering::Relaxed);
            s.generation.fetch_add(1, Ordering::Release);
        }
        s.wake.notify_all();
        // A panic here must not unwind past the wait below while workers still hold the job.
        let mine = catch_unwind(AssertUnwindSafe(|| loop {
            let t = s.next.fetch_add(1, Ordering::Relaxed);
            if t >= tasks {
                break;
            }
            job(t, 0);
        }));
        let mut spins = 0;
        while s.active.load(Ordering::Acquire) != 0 && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        if s.active.load(Ordering::Acquire) != 0 {
            let mut st = s.lock();
            while s.active.load(Ordering::Acquire) != 0 {
                st = s.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        s.lock().job = None;
        if let Err(p) = mine {
            s.panicked.store(false, Ordering::Relaxed);
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU executor task panicked in a worker thread");
        }
    }
}

fn worker(s: &Shared, id: usize) {
    // Everything a worker does is the engine's work.
    let _scope = crate::alloc::scope(crate::alloc::Scope::Engine);
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        while s.generation.load(Ordering::Acquire) == seen && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        let (job, tasks) = {
            let mut st = s.lock();
            while s.generation.load(Ordering::Acquire) == seen && !st.shutdown {
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = s.generation.load(Ordering::Acquire);
            (st.job, st.tasks)
        };
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: `Pool::run` keeps the closure alive until this worker decrements `active`
            // below (see `JobPtr`).
            let f = unsafe { &*ptr };
            let r = catch_unwind(AssertUnwindSafe(|| loop {
                let t = s.next.fetch_add(1, Ordering::Relaxed);
                if t >= tasks {
                    break;
                }
                f(t, id);
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        if s.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _st = s.lock();
            s.done.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_pool_size() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for tasks in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                let max_worker = AtomicUsize::new(0);
                for _ in 0..3 {
                    pool.run(tasks, &|t, w| {
                        hits[t].fetch_add(1, Ordering::Relaxed);
                        max_worker.fetch_max(w, Ordering::Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 3));
                assert!(max_worker.load(Ordering::Relaxed) < threads);
            }
        }
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_still_works() {
        let pool = Pool::new(3).unwrap();
        for on_caller in [false, true] {
            let panicked = AtomicBool::new(false);
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(64, &|t, w| {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    if (w == 0) == on_caller {
                        panicked.store(true, Ordering::Relaxed);
                        panic!("task {t}");
                    }
                })
            }));
            assert_eq!(r.is_err(), panicked.load(Ordering::Relaxed));
        }
        let n = AtomicUsize::new(0);
        pool.run(10, &|_, _| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }
}
