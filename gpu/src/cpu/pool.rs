//! The CPU backend's thread pool: helpers that spin between jobs instead of sleeping.
//!
//! A decode step runs ~250 short parallel regions (each matmul is tens of microseconds). With
//! rayon, a helper that found no work for a moment goes to sleep, and waking it costs a
//! futex round trip plus the scheduler's latency, which on a VM is of the order of the region
//! itself (measured: the attention output projection, run right after single-threaded
//! attention, was *slower* on two threads than on one). Here helpers spin for a short window
//! after each job ([`SPIN_WINDOW`]), so the regions of a step find them awake, and park after
//! it, so an idle server costs nothing. This is llama.cpp's and candle's design (KERNELS.md
//! §3.1).
//!
//! Work is split into numbered tasks that every thread, the caller included, claims from one
//! atomic counter, so a thread slowed by something else simply takes fewer tasks. One job runs
//! at a time: a second caller (another thread, or a task that itself asks for parallel work)
//! runs its tasks inline instead of waiting.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper keeps spinning after its last job before it parks. Longer than the
/// gaps inside a step and between tokens (sampling), short enough that an idle server idles.
const SPIN_WINDOW: Duration = Duration::from_millis(3);

/// A job: the caller's closure with its lifetime erased. Only dereferenced by a thread that
/// claimed one of its tasks, and the caller does not return before every claimed task ran.
#[derive(Clone, Copy)]
struct JobRef {
    run: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    /// The generation the job is published under: a helper that read the state of the
    /// previous job must not claim tasks of this one.
    generation: u64,
}

// SAFETY: the closure is `Sync`, and the pointer is only used while the caller waits for it.
unsafe impl Send for JobRef {}

struct Shared {
    /// Generation (high 32 bits) and next unclaimed task (low 32 bits): claiming is one CAS
    /// that fails if the job changed meanwhile.
    state: AtomicU64,
    job: Mutex<Option<JobRef>>,
    done: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: Condvar,
}

/// The pool (one per process, sized on first use).
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    busy: AtomicBool,
}

thread_local! {
    /// Set while this thread runs pool tasks: nested parallel calls run inline.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// The process's pool, with as many threads as rayon's pool (which `--threads` sizes).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
    }

    fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let shared = Arc::clone(&shared);
            // A helper that cannot start only makes the pool smaller: the caller runs every
            // task it cannot hand out.
            let _ = std::thread::Builder::new()
                .name(format!("lowbit-cpu-{i}"))
                .spawn(move || helper(&shared));
        }
        Self {
            shared,
            threads,
            busy: AtomicBool::new(false),
        }
    }

    /// Threads that run tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0)`, …, `f(tasks − 1)` across the pool; returns when all have run.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        // (Task numbers share a 64-bit word with the generation, 32 bits each.)
        let inline = tasks <= 1
            || tasks > u32::MAX as usize
            || self.threads == 1
            || IN_TASK.with(Cell::get)
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err();
        if inline {
            (0..tasks).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for as long as this call waits (see JobRef).
        let run: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        // The job carries its generation and is published before the state names it: a
        // helper still holding the previous generation then sees a mismatch and claims
        // nothing (without it, it could claim a task of this job under the old counter and
        // finish the count early, leaving outputs unwritten: found by fuzzing the server).
        let generation = (s.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.done.store(0, Ordering::Relaxed);
        *lock(&s.job) = Some(JobRef {
            run,
            tasks,
            generation,
        });
        s.state.store(generation << 32, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&s.wake_lock);
            s.wake.notify_all();
        }
        work(s, generation);
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        *lock(&s.job) = None;
        self.busy.store(false, Ordering::Release);
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU backend task panicked");
        }
    }

    /// Results of `f(0..tasks)`, in order.
    pub fn map<R: Send>(&self, tasks: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
        let mut slots: Vec<Option<R>> = (0..tasks).map(|_| None).collect();
        self.for_each_chunk_mut(&mut slots, 1, |i, slot| slot[0] = Some(f(i)));
        slots
            .into_iter()
            .map(|r| r.expect("every task ran"))
            .collect()
    }

    /// Runs `f(i, chunk)` over `data`'s consecutive chunks of `chunk` elements (the last may be
    /// shorter), in parallel.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let n = chunk.min(len - start);
            // SAFETY: tasks get disjoint ranges of `data`, which outlives the call.
            let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
            f(i, part);
        });
    }
}

/// A buffer's start shared with the tasks of one parallel call, each writing its own
/// disjoint part of it (the caller states why they are disjoint where it writes).
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> SendPtr<T> {
    // Methods, so that closures capture the whole (Sync) wrapper, not its pointer field.
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
    pub(crate) fn at(&self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}
// SAFETY: only used to hand disjoint parts of one buffer, which outlives the call, to tasks.
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claims and runs tasks of job `generation` until none are left.
fn work(s: &Shared, generation: u64) {
    let Some(job) = *lock(&s.job) else {
        return;
    };
    if job.generation != generation {
        return;
    }
    IN_TASK.with(|t| t.set(true));
    loop {
        let state = s.state.load(Ordering::Acquire);
        let next = state & 0xffff_ffff;
        if state >> 32 != generation || next as usize >= job.tasks {
            break;
        }
        if s.state
            .compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SAFETY: task `next` of this generation is claimed and not done, so its caller is
        // still waiting and the closure alive.
        let f = unsafe { &*job.run };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(next as usize))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
    IN_TASK.with(|t| t.set(false));
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let g = s.state.load(Ordering::Acquire) >> 32;
            if g != seen {
                break Some(g);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && since.elapsed() > SPIN_WINDOW {
                break None;
            }
            std::hint::spin_loop();
        };
        let generation = generation.unwrap_or_else(|| {
            // Park until a job is published (the re-check under the lock closes the race with
            // a publisher that saw no sleepers).
            let mut guard = lock(&s.wake_lock);
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let g = loop {
                let g = s.state.load(Ordering::SeqCst) >> 32;
                if g != seen {
                    break g;
                }
                guard = s
                    .wake
                    .wait(guard)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            };
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            g
        });
        seen = generation;
        work(s, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternating_small_and_large_jobs_never_lose_a_task() {
        // A helper that saw a 2-task job could once claim tasks of the next, larger job under
        // the old generation and end it early (`map` then found a slot unset).
        let pool = Pool::new(2);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut rounds = 0u64;
        while Instant::now() < deadline {
            assert_eq!(pool.map(2, |i| i), [0, 1]);
            let big = pool.map(64, |i| i * 3);
            assert!(big.iter().enumerate().all(|(i, &v)| v == i * 3));
            rounds += 1;
        }
        assert!(rounds > 100);
    }

    #[test]
    fn every_task_runs_once_and_results_keep_their_order() {
        let pool = Pool::new(3);
        for tasks in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            assert_eq!(
                pool.map(tasks, |i| i * i),
                (0..tasks).map(|i| i * i).collect::<Vec<_>>()
            );
        }
        let mut data = vec![0usize; 103];
        pool.for_each_chunk_mut(&mut data, 10, |c, part| {
            for (j, v) in part.iter_mut().enumerate() {
                *v = c * 10 + j;
            }
        });
        assert_eq!(data, (0..103).collect::<Vec<_>>());
    }

    #[test]
    fn nested_and_concurrent_calls_finish() {
        let pool = Pool::new(2);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let total = AtomicUsize::new(0);
                        pool.run(8, &|_| {
                            pool.run(4, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                        assert_eq!(total.load(Ordering::Relaxed), 32);
                    }
                });
            }
        });
        // After the spin window the helper parks, and a new job still wakes it.
        std::thread::sleep(SPIN_WINDOW * 3);
        assert_eq!(pool.map(5, |i| i + 1), vec![1, 2, 3, 4, 5]);
    }
}
