//! A fixed pool of worker threads, built once: [`Pool::run`] hands `tasks` indices to the caller
//! and the workers and returns when every task is done. Nothing is spawned and nothing is
//! allocated per call (the job is a borrowed closure; `Mutex`/`Condvar` are futexes on Linux), so
//! the executor can use every core inside a zero-allocation frame.
//!
//! Workers spin for a while ([`SPIN_TIME`]) after a job before sleeping, so the many short jobs
//! of one frame (one per matrix product) do not each pay a futex wake-up; between frames they
//! sleep.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called with (task index, worker index); worker 0 is the caller of [`Pool::run`].
type Job = dyn Fn(usize, usize) + Sync;

/// How long a worker (or the caller, waiting for the last task) spins before it sleeps. A job
/// that finds a worker asleep pays its wake-up: on a 2-vCPU VM a worker claimed its first task
/// 35–46 µs after the job began when it slept after 33 µs of spinning, 1–2 µs when it spun for
/// half a millisecond, long enough to cover the serial steps between one frame's parallel
/// jobs. Between frames the workers sleep.
const SPIN_TIME: Duration = Duration::from_micros(500);

/// Spin until `ready()` (true) or until [`SPIN_TIME`] has passed (false).
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= SPIN_TIME {
            return ready();
        }
    }
}

/// Multiply-adds below which [`Pool::run_sized`] keeps a job on the calling thread: about 20 µs
/// of one core's work, several times a job's hand-off (a futex wake and cache-line transfers).
/// The default bundle's products (17×96×384 ≈ 0.6 M) stay on one thread; ViT-B/32's (50×768×768
/// ≈ 30 M and up) are split.
pub const MIN_PARALLEL_WORK: usize = 1 << 20;

/// Values below which [`Pool::run_prep`] keeps a per-value pass (packing, quantizing) on the
/// calling thread: a few microseconds of work, about a job's hand-off.
pub const MIN_PARALLEL_VALUES: usize = 1 << 13;

#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: a worker dereferences the pointer only to run a task it claimed for the job's
// generation (see `Shared::claim`), and `Pool::run` keeps the borrowed closure (which is
// `Sync`) alive until every task of that generation has finished.
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
    /// The job's generation (high 32 bits) and its next unclaimed task (low 32 bits), in one
    /// word so that a task is claimed for one generation only: a worker that wakes late, after
    /// its job has ended, can neither run the old closure nor take a task of the next job.
    claim: AtomicU64,
    /// Tasks of the current job that have finished (run or panicked).
    finished: AtomicUsize,
    /// A task panicked in a worker.
    panicked: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a job panicked; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim the next task of generation `generation` (of `tasks`); None when that job has no
    /// task left or is over.
    fn claim(&self, generation: u32, tasks: usize) -> Option<usize> {
        let mut c = self.claim.load(Ordering::Acquire);
        loop {
            let (g, t) = ((c >> 32) as u32, (c & 0xFFFF_FFFF) as usize);
            if g != generation || t >= tasks {
                return None;
            }
            match self
                .claim
                .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(t),
                Err(now) => c = now,
            }
        }
    }

    /// Count one finished task of a job of `tasks`; the last one wakes a sleeping caller.
    fn finish(&self, tasks: usize) {
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == tasks {
            let _st = self.lock();
            self.done.notify_all();
        }
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
            claim: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
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

    /// Like [`Pool::run`], for a job of about `work` multiply-adds: below
    /// [`MIN_PARALLEL_WORK`] the caller runs every task itself (waking the workers and waiting
    /// for them costs more than they would save).
    pub fn run_sized(&self, work: usize, tasks: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        if self.runs_here(work) {
            run_here(tasks, job);
        } else {
            self.run(tasks, job);
        }
    }

    /// Like [`Pool::run_sized`], for the serial preparation in front of a job of `work`
    /// multiply-adds (packing or quantizing its `values` inputs): split across the pool only when
    /// the job itself is and the preparation is at least [`MIN_PARALLEL_VALUES`]; a serial pass
    /// there would hold the other threads up (ViT-B/32's 50 × 3072 activations: a fifth of the
    /// product's time).
    pub fn run_prep(
        &self,
        work: usize,
        values: usize,
        tasks: usize,
        job: &(dyn Fn(usize, usize) + Sync),
    ) {
        if self.runs_here(work) || values < MIN_PARALLEL_VALUES {
            run_here(tasks, job);
        } else {
            self.run(tasks, job);
        }
    }

    /// How far apart the tasks one thread claims in a job of `work` multiply-adds most likely
    /// are: 1 on the calling thread alone, else the thread count (claims go round the
    /// threads). What a kernel prefetches for the task it runs next.
    pub fn claim_stride(&self, work: usize) -> usize {
        if self.runs_here(work) {
            1
        } else {
            self.threads()
        }
    }

    /// Whether [`Pool::run_sized`] runs a job of `work` on the calling thread alone (tasks in
    /// order).
    pub fn runs_here(&self, work: usize) -> bool {
        self.workers.is_empty() || work < MIN_PARALLEL_WORK
    }

    /// Run `job(task, worker)` for every task in `0..tasks` across the pool; returns when all
    /// are done. Tasks are claimed dynamically; `worker < threads()` identifies per-thread
    /// scratch. The caller runs tasks too and waits only for tasks that were claimed: a worker
    /// that the OS has not scheduled (other processes on its core) holds nothing up, its share
    /// is taken by the threads that run. Panics (after every claimed task has finished) if a
    /// task panicked.
    pub fn run(&self, tasks: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        if self.workers.is_empty() || tasks <= 1 {
            return run_here(tasks, job);
        }
        assert!(tasks < 1 << 32, "{tasks} tasks in one job");
        let s = &*self.shared;
        // SAFETY: erases the closure's lifetime only; a worker calls it only for a task it
        // claimed for this generation, and this function does not return before every task of
        // the generation has finished (the `finished` wait below).
        let ptr: *const Job = unsafe { std::mem::transmute(job as *const _) };
        let generation = {
            let mut st = s.lock();
            st.job = Some(JobPtr(ptr));
            st.tasks = tasks;
            s.finished.store(0, Ordering::Relaxed);
            let generation = ((s.claim.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
            s.claim
                .store(u64::from(generation) << 32, Ordering::Release);
            generation
        };
        s.wake.notify_all();
        // A panic in the caller's task must not unwind past the wait below while workers may
        // still run tasks of this job.
        let mut mine = Ok(());
        while let Some(t) = s.claim(generation, tasks) {
            let r = catch_unwind(AssertUnwindSafe(|| job(t, 0)));
            s.finish(tasks);
            if r.is_err() && mine.is_ok() {
                mine = r;
            }
        }
        spin_until(|| s.finished.load(Ordering::Acquire) >= tasks);
        {
            let mut st = s.lock();
            while s.finished.load(Ordering::Acquire) < tasks {
                st = s.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.job = None;
        }
        if let Err(p) = mine {
            s.panicked.store(false, Ordering::Relaxed);
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU executor task panicked in a worker thread");
        }
    }
}

/// Every task of a job on the calling thread (worker 0), in order.
fn run_here(tasks: usize, job: &(dyn Fn(usize, usize) + Sync)) {
    for t in 0..tasks {
        job(t, 0);
    }
}

fn worker(s: &Shared, id: usize) {
    // Everything a worker does is the engine's work.
    let _scope = crate::alloc::scope(crate::alloc::Scope::Engine);
    let mut seen = 0u32;
    let generation = |s: &Shared| (s.claim.load(Ordering::Acquire) >> 32) as u32;
    loop {
        spin_until(|| generation(s) != seen);
        let (job, tasks) = {
            let mut st = s.lock();
            while generation(s) == seen && !st.shutdown {
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            // Under the lock, the job and its generation belong together.
            seen = generation(s);
            (st.job, st.tasks)
        };
        let Some(JobPtr(ptr)) = job else { continue };
        while let Some(t) = s.claim(seen, tasks) {
            // SAFETY: this task was claimed for generation `seen`, whose `Pool::run` keeps the
            // closure alive until the task is counted as finished (see `JobPtr`).
            let f = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| f(t, id))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.finish(tasks);
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

    #[test]
    fn many_short_jobs_each_run_every_task_exactly_once() {
        // Workers waking late for a job that has ended must neither rerun it nor take tasks
        // of the next one: thousands of tiny jobs back to back, each checked.
        let pool = Pool::new(4).unwrap();
        let hits: Vec<AtomicUsize> = (0..5).map(|_| AtomicUsize::new(0)).collect();
        for job in 0..20_000usize {
            let tasks = 2 + job % 4;
            pool.run(tasks, &|t, _| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            for (t, h) in hits.iter().enumerate() {
                let n = h.swap(0, Ordering::Relaxed);
                assert_eq!(n, usize::from(t < tasks), "job {job}, task {t} of {tasks}");
            }
        }
    }
}
