//! Prometheus metrics, with vLLM's names and meanings under a `lowbit:` prefix, so dashboards
//! and Kubernetes inference gateways written for vLLM read them unchanged. The engine updates
//! them; `GET /metrics` renders them.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets (seconds) for time to first token and queue time: vLLM's, from 1 ms.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Inter-token latency buckets (seconds): vLLM's.
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Whole-request latency buckets (seconds): vLLM's.
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0,
];

/// HTTP duration buckets (seconds) by route: few, to keep the label sets cheap (as vLLM's
/// instrumentator has them).
const HTTP_BUCKETS: &[f64] = &[0.1, 0.5, 1.0];
/// HTTP duration buckets (seconds) over all routes: many, for percentiles (the
/// instrumentator's `highr` set).
const HTTP_HIGHR_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0,
    7.5, 10.0, 30.0, 60.0,
];

/// Every metric lowbit exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub num_requests_running: IntGauge,
    pub num_requests_waiting: IntGauge,
    pub kv_cache_usage_perc: Gauge,
    pub num_preemptions_total: IntCounter,
    pub prompt_tokens_total: IntCounter,
    pub generation_tokens_total: IntCounter,
    pub prefix_cache_queries_total: IntCounter,
    pub prefix_cache_hits_total: IntCounter,
    pub request_success_total: IntCounterVec,
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    pub request_queue_time_seconds: Histogram,
    pub e2e_request_latency_seconds: Histogram,
    /// KV blocks referenced by running sequences (lowbit's own, for leak checks).
    pub kv_blocks_in_use: IntGauge,
    /// KV blocks in the pool.
    pub kv_blocks_total: IntGauge,
    /// Blocks of the sliding-window layers' own pool referenced by sequences, and in that
    /// pool (0 without one). lowbit's own.
    pub kv_window_blocks_in_use: IntGauge,
    pub kv_window_blocks_total: IntGauge,
    /// Bytes the model holds where it computes, by `kind`: `weights`, `kv_cache` and, on a GPU,
    /// `activations` (its recycled buffers). lowbit's own.
    pub device_memory_bytes: IntGaugeVec,
    /// 1, labelled with the `backend` that serves (`cpu`, `wgpu:<adapter>`). lowbit's own.
    pub backend_info: IntGaugeVec,
    /// Responses kept for `previous_response_id` (/v1/responses). lowbit's own, with the next
    /// two: what `--responses-store-memory` holds, and how often it ran out.
    pub responses_stored: IntGauge,
    /// Bytes the stored responses are counted as (their JSON).
    pub responses_store_bytes: IntGauge,
    /// Stored responses dropped, oldest first, to make room.
    pub responses_evicted_total: IntCounter,
    /// Speculative decoding (vLLM's names): steps in which a sequence verified drafts, the
    /// draft tokens verified, those accepted, and those accepted by `position` in their draft
    /// (0 first); acceptance = accepted / draft tokens.
    pub spec_decode_num_drafts_total: IntCounter,
    pub spec_decode_num_draft_tokens_total: IntCounter,
    pub spec_decode_num_accepted_tokens_total: IntCounter,
    pub spec_decode_num_accepted_tokens_per_pos_total: IntCounterVec,
    /// HTTP requests by `handler` (the route's template, `none` when no route matched),
    /// `method` and `status` class (`2xx`, `4xx`, …): the unprefixed names vLLM's HTTP
    /// instrumentation exports, and the next three too.
    pub http_requests_total: IntCounterVec,
    /// Until the response's head is sent (a stream's start), by `handler` and `method`.
    pub http_request_duration_seconds: HistogramVec,
    /// The same over all routes, in finer buckets.
    pub http_request_duration_highr_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn name(n: &str) -> String {
    format!("lowbit:{n}")
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let gauge = |n: &str, help: &str| IntGauge::new(name(n), help).expect("valid metric");
        let counter = |n: &str, help: &str| IntCounter::new(name(n), help).expect("valid metric");
        let histogram = |n: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name(n), help).buckets(buckets.to_vec()))
                .expect("valid metric")
        };
        let m = Self {
            registry: Registry::new(),
            num_requests_running: gauge(
                "num_requests_running",
                "Sequences being computed (prefill or decode).",
            ),
            num_requests_waiting: gauge("num_requests_waiting", "Requests waiting to start."),
            kv_cache_usage_perc: Gauge::new(
                name("kv_cache_usage_perc"),
                "Fraction of KV-cache blocks in use (1 = full).",
            )
            .expect("valid metric"),
            num_preemptions_total: counter(
                "num_preemptions_total",
                "Sequences preempted (blocks freed, recomputed later) for lack of KV blocks.",
            ),
            prompt_tokens_total: counter(
                "prompt_tokens_total",
                "Prompt tokens of admitted requests.",
            ),
            generation_tokens_total: counter("generation_tokens_total", "Tokens generated."),
            prefix_cache_queries_total: counter(
                "prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
            ),
            prefix_cache_hits_total: counter(
                "prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
            ),
            request_success_total: IntCounterVec::new(
                Opts::new(
                    name("request_success_total"),
                    "Finished requests by finish reason.",
                ),
                &["finished_reason"],
            )
            .expect("valid metric"),
            time_to_first_token_seconds: histogram(
                "time_to_first_token_seconds",
                "From arrival to the first generated token.",
                TTFT_BUCKETS,
            ),
            inter_token_latency_seconds: histogram(
                "inter_token_latency_seconds",
                "Between consecutive tokens of a sequence.",
                ITL_BUCKETS,
            ),
            request_queue_time_seconds: histogram(
                "request_queue_time_seconds",
                "From arrival until the request starts running.",
                TTFT_BUCKETS,
            ),
            e2e_request_latency_seconds: histogram(
                "e2e_request_latency_seconds",
                "From arrival until the last token.",
                E2E_BUCKETS,
            ),
            kv_blocks_in_use: gauge(
                "kv_blocks_in_use",
                "KV-cache blocks referenced by sequences.",
            ),
            kv_blocks_total: gauge("kv_blocks_total", "KV-cache blocks in the pool."),
            kv_window_blocks_in_use: gauge(
                "kv_window_blocks_in_use",
                "Blocks of the sliding-window layers' KV pool referenced by sequences.",
            ),
            kv_window_blocks_total: gauge(
                "kv_window_blocks_total",
                "Blocks in the sliding-window layers' KV pool (0: none, one pool for all layers).",
            ),
            device_memory_bytes: IntGaugeVec::new(
                Opts::new(
                    name("device_memory_bytes"),
                    "Bytes the model holds on its device, by kind (weights, kv_cache, activations).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            backend_info: IntGaugeVec::new(
                Opts::new(name("backend_info"), "The compute backend serving (value 1)."),
                &["backend"],
            )
            .expect("valid metric"),
            responses_stored: gauge(
                "responses_stored",
                "Responses kept for previous_response_id.",
            ),
            responses_store_bytes: gauge(
                "responses_store_bytes",
                "Bytes of the stored responses (their JSON).",
            ),
            responses_evicted_total: counter(
                "responses_evicted_total",
                "Stored responses dropped, oldest first, to make room.",
            ),
            spec_decode_num_drafts_total: counter(
                "spec_decode_num_drafts_total",
                "Drafts verified (one per speculating sequence and step).",
            ),
            spec_decode_num_draft_tokens_total: counter(
                "spec_decode_num_draft_tokens_total",
                "Draft tokens verified.",
            ),
            spec_decode_num_accepted_tokens_total: counter(
                "spec_decode_num_accepted_tokens_total",
                "Draft tokens accepted (the model chose them too).",
            ),
            spec_decode_num_accepted_tokens_per_pos_total: IntCounterVec::new(
                Opts::new(
                    name("spec_decode_num_accepted_tokens_per_pos_total"),
                    "Draft tokens accepted, by position in their draft (0 first).",
                ),
                &["position"],
            )
            .expect("valid metric"),
            http_requests_total: IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "HTTP requests by route, method and status class.",
                ),
                &["handler", "method", "status"],
            )
            .expect("valid metric"),
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "From a request's arrival until its response head, by route and method.",
                )
                .buckets(HTTP_BUCKETS.to_vec()),
                &["handler", "method"],
            )
            .expect("valid metric"),
            http_request_duration_highr_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "http_request_duration_highr_seconds",
                    "From a request's arrival until its response head, all routes.",
                )
                .buckets(HTTP_HIGHR_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.num_requests_running.clone()),
            Box::new(m.num_requests_waiting.clone()),
            Box::new(m.kv_cache_usage_perc.clone()),
            Box::new(m.num_preemptions_total.clone()),
            Box::new(m.prompt_tokens_total.clone()),
            Box::new(m.generation_tokens_total.clone()),
            Box::new(m.prefix_cache_queries_total.clone()),
            Box::new(m.prefix_cache_hits_total.clone()),
            Box::new(m.request_success_total.clone()),
            Box::new(m.time_to_first_token_seconds.clone()),
            Box::new(m.inter_token_latency_seconds.clone()),
            Box::new(m.request_queue_time_seconds.clone()),
            Box::new(m.e2e_request_latency_seconds.clone()),
            Box::new(m.kv_blocks_in_use.clone()),
            Box::new(m.kv_blocks_total.clone()),
            Box::new(m.kv_window_blocks_in_use.clone()),
            Box::new(m.kv_window_blocks_total.clone()),
            Box::new(m.device_memory_bytes.clone()),
            Box::new(m.backend_info.clone()),
            Box::new(m.responses_stored.clone()),
            Box::new(m.responses_store_bytes.clone()),
            Box::new(m.responses_evicted_total.clone()),
            Box::new(m.spec_decode_num_drafts_total.clone()),
            Box::new(m.spec_decode_num_draft_tokens_total.clone()),
            Box::new(m.spec_decode_num_accepted_tokens_total.clone()),
            Box::new(m.spec_decode_num_accepted_tokens_per_pos_total.clone()),
            Box::new(m.http_requests_total.clone()),
            Box::new(m.http_request_duration_seconds.clone()),
            Box::new(m.http_request_duration_highr_seconds.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric registered once");
        }
        for reason in ["stop", "length", "abort"] {
            m.request_success_total.with_label_values(&[reason]);
        }
        m
    }

    /// Counts one HTTP request that took `seconds` to its response head.
    pub fn observe_http(&self, handler: &str, method: &str, status: u16, seconds: f64) {
        let class = format!("{}xx", status / 100);
        self.http_requests_total
            .with_label_values(&[handler, method, &class])
            .inc();
        self.http_request_duration_seconds
            .with_label_values(&[handler, method])
            .observe(seconds);
        self.http_request_duration_highr_seconds.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_the_lowbit_prefix_and_http_ones_as_vllm() {
        let m = Metrics::new();
        m.prompt_tokens_total.inc_by(7);
        m.time_to_first_token_seconds.observe(0.05);
        m.device_memory_bytes
            .with_label_values(&["weights"])
            .set(1234);
        m.backend_info.with_label_values(&["cpu"]).set(1);
        m.observe_http("/v1/responses/{id}", "GET", 404, 0.002);
        let text = m.render();
        assert!(text.contains(
            "http_requests_total{handler=\"/v1/responses/{id}\",method=\"GET\",status=\"4xx\"} 1"
        ));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{handler=\"/v1/responses/{id}\",method=\"GET\",le=\"0.1\"} 1"
        ));
        assert!(text.contains("http_request_duration_highr_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("lowbit:prompt_tokens_total 7"), "{text}");
        assert!(text.contains("lowbit:device_memory_bytes{kind=\"weights\"} 1234"));
        assert!(text.contains("lowbit:backend_info{backend=\"cpu\"} 1"));
        assert!(text.contains("lowbit:time_to_first_token_seconds_bucket{le=\"0.06\"} 1"));
        assert!(text.contains("lowbit:request_success_total{finished_reason=\"stop\"} 0"));
        for n in [
            "num_requests_running",
            "num_requests_waiting",
            "kv_cache_usage_perc",
            "num_preemptions_total",
            "generation_tokens_total",
            "prefix_cache_queries_total",
            "prefix_cache_hits_total",
            "inter_token_latency_seconds_count",
            "request_queue_time_seconds_sum",
            "e2e_request_latency_seconds_bucket",
            "responses_stored 0",
            "responses_store_bytes 0",
            "responses_evicted_total 0",
            "spec_decode_num_drafts_total 0",
            "spec_decode_num_draft_tokens_total 0",
            "spec_decode_num_accepted_tokens_total 0",
        ] {
            assert!(text.contains(&format!("lowbit:{n}")), "{n} missing");
        }
    }
}
