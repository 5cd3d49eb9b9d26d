//! A fork-join loop for the decode path, whose workers stay awake between loops.
//!
//! Decoding one token runs about ten short parallel loops per layer (a few hundred per
//! token), separated by short serial steps (norms, AltUp, the sparse cut-off). Rayon's idle
//! workers go to sleep after a few dozen yields; waking one costs tens of microseconds, which
//! a 10-100 us loop cannot afford. [`for_each`] hands its tasks to workers that spin, then
//! yield, for [`AWAKE`] after each loop before they sleep, so the next loop starts at once.
//!
//! The pool has one worker fewer than the current rayon pool has threads: the caller (itself
//! normally a rayon thread) takes part. Calls from inside a task, calls while another thread
//! is using the pool, and calls under a rayon pool of another size go to rayon instead.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a worker stays awake after a loop (spinning, then yielding) before it sleeps.
const AWAKE: Duration = Duration::from_millis(2);
/// The first part of [`AWAKE`], spent spinning rather than yielding the CPU.
const SPIN: Duration = Duration::from_micros(50);

/// One call's tasks. Lives on the caller's stack; workers reach it only while they are
/// counted in [`Pool::active`], and the caller waits for that count to drop to zero.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    left: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs tasks until none is left to take.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.left.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Pool {
    workers: usize,
    /// The job being run, or null.
    job: AtomicPtr<Job<'static>>,
    /// Raised once per job: what idle workers watch.
    epoch: AtomicU64,
    /// Workers that may be reading `job`.
    active: AtomicUsize,
    /// A caller owns the pool.
    busy: AtomicBool,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

static POOL: OnceLock<&'static Pool> = OnceLock::new();

thread_local! {
    /// This thread is running a task of the pool (a worker, or a caller inside its loop).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f(i)` for every `i < n`, in parallel over the current rayon pool's thread count,
/// and returns when all have finished. A panic in a task is raised again here after the
/// others have finished.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 || IN_TASK.with(Cell::get) {
        return (0..n).for_each(f);
    }
    let pool = *POOL.get_or_init(|| Pool::start(threads - 1));
    if pool.workers != threads - 1
        || pool
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return (0..n).into_par_iter().for_each(&f);
    }
    let job = Job {
        f: &f,
        n,
        next: AtomicUsize::new(0),
        left: AtomicUsize::new(n),
        panicked: AtomicBool::new(false),
    };
    // SAFETY (lifetime): the pointer is withdrawn, and every worker that could have read it
    // has left (`active` = 0), before `job` goes out of scope below.
    let ptr = &job as *const Job<'_> as *mut Job<'static>;
    pool.job.store(ptr, Ordering::SeqCst);
    pool.epoch.fetch_add(1, Ordering::SeqCst);
    if pool.sleeping.load(Ordering::SeqCst) > 0 {
        let _g = pool.lock.lock().unwrap_or_else(|e| e.into_inner());
        pool.wake.notify_all();
    }
    IN_TASK.with(|c| c.set(true));
    job.work();
    IN_TASK.with(|c| c.set(false));
    while job.left.load(Ordering::Acquire) > 0 {
        std::hint::spin_loop();
    }
    pool.job.store(std::ptr::null_mut(), Ordering::SeqCst);
    while pool.active.load(Ordering::SeqCst) > 0 {
        std::hint::spin_loop();
    }
    pool.busy.store(false, Ordering::Release);
    if job.panicked.load(Ordering::Relaxed) {
        panic!("a task of cpu::pool::for_each panicked");
    }
}

/// Runs `f(c, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), in
/// parallel as [`for_each`] does; piece `c` starts at `c * chunk`.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk 0");
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), |c| {
        let start = c * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: the pieces are disjoint ranges of `data`, each handed to one task, and
        // `data` is borrowed mutably until every task has finished.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(c, piece)
    });
}

/// A pointer shared by tasks that touch disjoint parts of what it points to.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used by `for_each_chunk_mut`, whose tasks access disjoint elements of a slice
// of `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl Pool {
    fn start(workers: usize) -> &'static Pool {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("gemma3n-pool-{i}"))
                .spawn(move || pool.worker());
            if spawned.is_err() {
                // Without its workers the pool still finishes every job: the caller takes
                // every task.
                break;
            }
        }
        pool
    }

    fn worker(&self) {
        IN_TASK.with(|c| c.set(true));
        let mut seen = self.epoch.load(Ordering::SeqCst);
        loop {
            self.wait_for_job(seen);
            seen = self.epoch.load(Ordering::SeqCst);
            self.active.fetch_add(1, Ordering::SeqCst);
            let p = self.job.load(Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: non-null while its caller waits for `active` to reach zero, which
                // this worker's count holds off until it is done with the job.
                unsafe { (*p).work() };
            }
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Returns once the epoch differs from `seen`: spinning, then yielding, then asleep.
    fn wait_for_job(&self, seen: u64) {
        let start = Instant::now();
        let mut round = 0u32;
        while self.epoch.load(Ordering::Acquire) == seen {
            round = round.wrapping_add(1);
            if !round.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = start.elapsed();
            if idle < SPIN {
                continue;
            }
            if idle < AWAKE {
                std::thread::yield_now();
                continue;
            }
            let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.sleeping.fetch_add(1, Ordering::SeqCst);
            while self.epoch.load(Ordering::SeqCst) == seen {
                g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            self.sleeping.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            for n in [0usize, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "n = {n}"
                );
            }
            // Nested calls and calls from several threads at once.
            let total = AtomicUsize::new(0);
            (0..8usize).into_par_iter().for_each(|_| {
                for_each(10, |_| {
                    for_each(3, |_| {
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                });
            });
            assert_eq!(total.load(Ordering::Relaxed), 8 * 10 * 3);
            for (len, chunk) in [(0usize, 3usize), (10, 3), (9, 3), (5, 8)] {
                let mut v = vec![0usize; len];
                for_each_chunk_mut(&mut v, chunk, |c, piece| {
                    for (j, x) in piece.iter_mut().enumerate() {
                        *x += c * chunk + j + 1;
                    }
                });
                assert!(
                    v.iter().enumerate().all(|(i, &x)| x == i + 1),
                    "{len} {chunk}"
                );
            }
        });
    }

    #[test]
    fn a_panicking_task_panics_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = pool.install(|| catch_unwind(|| for_each(50, |i| assert!(i != 17))));
        assert!(r.is_err());
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        pool.install(|| {
            for_each(50, |_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 50);
    }
}
