//! The engine thread and the cloneable handle the HTTP side holds.
//!
//! One thread owns the model, its KV pool and the scheduler; tokio tasks never compute. A
//! request crosses by a channel, admission (queue bounds, context length) is decided on the
//! caller's side from shared counters so overload is an immediate answer, and events come
//! back on the request's own channel. Dropping the [`EventStream`] (a client gone) cancels
//! the request at the next step.

use super::request::{Event, GenerationRequest};
use super::scheduler::Scheduler;
use super::step::StepModel;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Bounds on what waits for the engine.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Requests waiting to start.
    pub max_waiting_requests: usize,
    /// Prompt tokens of the waiting requests.
    pub max_waiting_tokens: usize,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the model is still loading")]
    NotReady,
    #[error("the server is shutting down")]
    Draining,
    #[error("the server is at capacity ({0}); retry later")]
    QueueFull(&'static str, u64),
    #[error("this request needs {needed} tokens (prompt {prompt} + max_tokens {max_tokens}) but the context holds {limit}")]
    ContextLength {
        needed: usize,
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("the engine has stopped")]
    Stopped,
}

/// Counters shared between the engine thread and the handles.
#[derive(Debug, Default)]
struct Shared {
    ready: AtomicBool,
    draining: AtomicBool,
    stopped: AtomicBool,
    waiting_requests: AtomicUsize,
    waiting_tokens: AtomicUsize,
    /// Requests whose event stream is still held (in flight), for the drain.
    in_flight: AtomicUsize,
    /// Tokens computed per second, smoothed (f64 bits): the drain rate for `Retry-After`.
    tokens_per_second: AtomicU64,
    max_model_len: AtomicUsize,
    vocab: AtomicUsize,
}

/// A snapshot for `/health` and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    pub draining: bool,
    pub in_flight: usize,
    pub waiting: usize,
}

enum Command {
    Submit(GenerationRequest, tokio::sync::mpsc::UnboundedSender<Event>),
}

/// The HTTP side's handle on the engine (cheap to clone).
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    limits: AdmissionLimits,
    metrics: Metrics,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("health", &self.health())
            .finish()
    }
}

/// A request's events; dropping it cancels the request.
#[derive(Debug)]
pub struct EventStream {
    rx: UnboundedReceiver<Event>,
    shared: Arc<Shared>,
}

impl EventStream {
    /// The next event; `None` once the engine is done with the request.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the engine thread builds once the model is loaded.
pub struct Loaded<M: StepModel> {
    pub scheduler: Scheduler<M>,
    pub max_model_len: usize,
    pub vocab: usize,
}

/// Smoothing of the drain rate: each step moves it this far towards the step's own rate.
const RATE_SMOOTHING: f64 = 0.1;

impl EngineHandle {
    /// Starts the engine thread; `load` runs on it (the model loads there, while the HTTP
    /// side already answers `/health`). `on_loaded` hears whether loading worked.
    pub fn spawn<M: StepModel + 'static>(
        limits: AdmissionLimits,
        metrics: Metrics,
        load: impl FnOnce() -> anyhow::Result<Loaded<M>> + Send + 'static,
        on_loaded: impl FnOnce(anyhow::Result<()>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let handle = Self {
            tx,
            shared: shared.clone(),
            limits,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("lowbit-engine".into())
            .spawn(move || match load() {
                Ok(loaded) => {
                    shared
                        .max_model_len
                        .store(loaded.max_model_len, Ordering::SeqCst);
                    shared.vocab.store(loaded.vocab, Ordering::SeqCst);
                    shared.ready.store(true, Ordering::SeqCst);
                    on_loaded(Ok(()));
                    run(loaded.scheduler, rx, &shared, &metrics);
                    shared.stopped.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    shared.stopped.store(true, Ordering::SeqCst);
                    on_loaded(Err(e));
                }
            })?;
        Ok(handle)
    }

    /// Queues a request, or says at once why not.
    pub fn submit(&self, req: GenerationRequest) -> Result<EventStream, SubmitError> {
        let s = &self.shared;
        if s.stopped.load(Ordering::SeqCst) {
            return Err(SubmitError::Stopped);
        }
        if !s.ready.load(Ordering::SeqCst) {
            return Err(SubmitError::NotReady);
        }
        if s.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::Draining);
        }
        let limit = s.max_model_len.load(Ordering::SeqCst);
        let needed = req.prompt.len() + req.max_tokens;
        if needed > limit {
            return Err(SubmitError::ContextLength {
                needed,
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                limit,
            });
        }
        let vocab = s.vocab.load(Ordering::SeqCst);
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(SubmitError::BadToken { id, vocab });
        }
        let tokens = req.prompt.len();
        let waiting = s.waiting_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let waiting_tokens = s.waiting_tokens.fetch_add(tokens, Ordering::SeqCst) + tokens;
        let full = if waiting > self.limits.max_waiting_requests {
            Some("--max-waiting-requests")
        } else if waiting_tokens > self.limits.max_waiting_tokens {
            Some("--max-waiting-tokens")
        } else {
            None
        };
        if let Some(which) = full {
            s.waiting_requests.fetch_sub(1, Ordering::SeqCst);
            s.waiting_tokens.fetch_sub(tokens, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(
                which,
                self.retry_after(waiting_tokens),
            ));
        }
        let (etx, erx) = unbounded_channel();
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        let stream = EventStream {
            rx: erx,
            shared: s.clone(),
        };
        if self.tx.send(Command::Submit(req, etx)).is_err() {
            s.waiting_requests.fetch_sub(1, Ordering::SeqCst);
            s.waiting_tokens.fetch_sub(tokens, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        self.metrics
            .num_requests_waiting
            .set(s.waiting_requests.load(Ordering::SeqCst) as i64);
        Ok(stream)
    }

    /// Seconds until `waiting_tokens` drain at the recent rate, within 1..=60.
    fn retry_after(&self, waiting_tokens: usize) -> u64 {
        let rate = f64::from_bits(self.shared.tokens_per_second.load(Ordering::SeqCst));
        if rate <= 0.0 {
            return 1;
        }
        ((waiting_tokens as f64 / rate).ceil() as u64).clamp(1, 60)
    }

    /// Liveness and readiness.
    pub fn health(&self) -> Health {
        let s = &self.shared;
        Health {
            ready: s.ready.load(Ordering::SeqCst) && !s.stopped.load(Ordering::SeqCst),
            draining: s.draining.load(Ordering::SeqCst),
            in_flight: s.in_flight.load(Ordering::SeqCst),
            waiting: s.waiting_requests.load(Ordering::SeqCst),
        }
    }

    /// Stops taking requests (`/ready` turns 503); in-flight ones go on.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// The longest prompt + completion a request may have (0 until loaded).
    pub fn max_model_len(&self) -> usize {
        self.shared.max_model_len.load(Ordering::SeqCst)
    }
}

/// The engine loop: take requests, step, repeat; sleep on the channel when idle.
fn run<M: StepModel>(
    mut sched: Scheduler<M>,
    rx: mpsc::Receiver<Command>,
    shared: &Shared,
    metrics: &Metrics,
) {
    let take = |sched: &mut Scheduler<M>, cmd: Command| match cmd {
        Command::Submit(req, events) => sched.add(req, events),
    };
    loop {
        if !sched.has_work() {
            match rx.recv() {
                Ok(cmd) => take(&mut sched, cmd),
                Err(_) => return,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            take(&mut sched, cmd);
        }
        let start = Instant::now();
        let planned = sched.schedule();
        let s = &planned.stats;
        shared
            .waiting_requests
            .fetch_sub(s.started + s.dropped_waiting, Ordering::SeqCst);
        shared.waiting_tokens.fetch_sub(
            s.started_tokens + s.dropped_waiting_tokens,
            Ordering::SeqCst,
        );
        metrics
            .num_requests_waiting
            .set(shared.waiting_requests.load(Ordering::SeqCst) as i64);
        let stats = sched.execute(planned);
        if stats.tokens == 0 {
            // Nothing could run (only cancelled requests were reaped): do not spin.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let rate = stats.tokens as f64 / start.elapsed().as_secs_f64().max(1e-6);
        let old = f64::from_bits(shared.tokens_per_second.load(Ordering::SeqCst));
        let new = if old <= 0.0 {
            rate
        } else {
            old + RATE_SMOOTHING * (rate - old)
        };
        shared
            .tokens_per_second
            .store(new.to_bits(), Ordering::SeqCst);
    }
}
