//! gemma3n-server: an OpenAI-compatible HTTP API over one loaded model (`gemma3n serve`).
//!
//! - `POST /v1/chat/completions` and `POST /v1/completions`, streamed (server-sent events,
//!   `data: {...}` chunks then `data: [DONE]`, usage with `stream_options.include_usage`) or
//!   not; `GET /v1/models` (the model and, for an E4B-shaped model, every official MatFormer
//!   size as its own id: the request's `model` picks the size, all share one copy of the
//!   weights); `GET /health`; `GET /metrics` (Prometheus text).
//! - Errors use the OpenAI error body: 400 malformed or invalid, 401 bad key, 404 unknown
//!   model, 422 unsupported content, 429 queue full (with `Retry-After`).
//! - One worker runs the requests with continuous batching ([`worker`]); a client that
//!   disconnects cancels its request at the next token.

pub mod api;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::{self, StreamExt};
use gemma3n_engine::{
    AnyDecoder, ChatMessage, ChatTemplate, ContentPart, SamplingParams, Tokenizer,
};
use gemma3n_model::matformer::{official_slices, SlicePlan};
use gemma3n_model::TextModel;
use serde_json::{json, Value};
use tokio::sync::mpsc::unbounded_channel;

use api::{ApiError, ChatRequest, CompletionRequest, Content, Sampling};
use worker::{Event, Job, Stats};

/// The loaded model and what generation needs besides it.
pub struct Model {
    pub text: Arc<TextModel>,
    /// Where the text decoder runs when not on the CPU (`serve --device cuda`: the same
    /// weights on a GPU); `None`: `text`.
    pub decoder: Option<Arc<dyn AnyDecoder>>,
    /// The towers, when the checkpoint has them (image and audio parts need them).
    pub vision: Option<gemma3n_model::vision::VisionModel>,
    pub audio: Option<gemma3n_model::audio::AudioModel>,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Ids that end generation.
    pub stop_ids: Vec<u32>,
    /// The sampling defaults (the checkpoint's generation config).
    pub defaults: SamplingParams,
    /// The base of the model ids (`gemma-3n`): an E4B-shaped model is served as
    /// `gemma-3n-E4B` and its official sizes as `gemma-3n-E2B`, `gemma-3n-E3.39B`, ...
    pub name: String,
}

impl Model {
    /// The decoder every request runs on.
    pub fn decoder(&self) -> &dyn AnyDecoder {
        self.decoder.as_deref().unwrap_or(&*self.text)
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Required `Authorization: Bearer` key, if any.
    pub api_key: Option<String>,
    /// Requests decoded together (continuous batching).
    pub max_batch: usize,
    /// Prompt tokens prefilled per scheduler step.
    pub prefill_chunk: usize,
    /// Requests waiting beyond the running ones; more get 429.
    pub max_queue: usize,
    /// Largest request body (bytes).
    pub max_body: usize,
}

struct AppState {
    model: Arc<Model>,
    /// Model id → the size it runs.
    sizes: Vec<(String, Arc<SlicePlan>)>,
    jobs: SyncSender<Job>,
    stats: Arc<Stats>,
    opts: Options,
}

type Shared = Arc<AppState>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, axum::Json(self.body())).into_response();
        if self.status == 429 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// The model ids served under the base `name`: the whole model, then (for an E4B-shaped
/// model) each official size.
fn model_ids(name: &str, cfg: &gemma3n_model::config::TextConfig) -> Vec<(String, Arc<SlicePlan>)> {
    let full = match (cfg.num_hidden_layers, cfg.hidden_size) {
        (35, 2048) => format!("{name}-E4B"),
        (30, 2048) => format!("{name}-E2B"),
        _ => name.to_string(),
    };
    let mut out = vec![(full, Arc::new(SlicePlan::full(cfg)))];
    for s in official_slices() {
        if let Ok(plan) = SlicePlan::new(cfg, &s.slice) {
            let id = format!("{name}-{}", s.short);
            if !plan.is_full(cfg) && out.iter().all(|(i, _)| *i != id) {
                out.push((id, Arc::new(plan)));
            }
        }
    }
    out
}

/// Starts the worker: `spawn` runs the worker loop on a thread of the caller's choosing (the
/// CLI's compute thread pool, so the model's parallel kernels run where they should).
pub type Spawn = Box<dyn FnOnce(Box<dyn FnOnce() + Send>) + Send>;

/// Binds and serves until Ctrl-C. Prints the address it listens on.
pub fn run(model: Model, opts: Options, spawn: Spawn) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
            .parse()
            .map_err(|e| anyhow::anyhow!("--host {} --port {}: {e}", opts.host, opts.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let app = router(model, opts, spawn);
        eprintln!("gemma3n serve: listening on http://{local}");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

/// The HTTP routes over `model`, with its worker started by `spawn`.
pub fn router(model: Model, opts: Options, spawn: Spawn) -> Router {
    let model = Arc::new(model);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(opts.max_queue);
    let stats = Arc::new(Stats::default());
    {
        let (m, s) = (model.clone(), stats.clone());
        let max_batch = opts.max_batch.max(1);
        let chunk = opts.prefill_chunk.max(1);
        spawn(Box::new(move || worker::run(m, rx, s, max_batch, chunk)));
    }
    let state = Arc::new(AppState {
        sizes: model_ids(&model.name, &model.text.cfg),
        model,
        jobs: tx,
        stats,
        opts: opts.clone(),
    });
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(|| async { ApiError::status(404, "invalid_request_error", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(opts.max_body))
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_key(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.opts.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::status(
            401,
            "invalid_request_error",
            "invalid or missing API key (Authorization: Bearer KEY)",
        )
        .with_code("invalid_api_key"))
    }
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let st = &s.stats;
    let body = format!(
        "# TYPE gemma3n_queue_depth gauge\ngemma3n_queue_depth {}\n\
         # TYPE gemma3n_active_sequences gauge\ngemma3n_active_sequences {}\n\
         # TYPE gemma3n_requests_total counter\ngemma3n_requests_total {}\n\
         # TYPE gemma3n_prompt_tokens_total counter\ngemma3n_prompt_tokens_total {}\n\
         # TYPE gemma3n_generated_tokens_total counter\ngemma3n_generated_tokens_total {}\n\
         # TYPE gemma3n_decode_steps_total counter\ngemma3n_decode_steps_total {}\n\
         # TYPE gemma3n_decode_rows_total counter\ngemma3n_decode_rows_total {}\n\
         # TYPE gemma3n_decode_max_rows gauge\ngemma3n_decode_max_rows {}\n",
        st.queued.load(Ordering::Relaxed),
        st.active.load(Ordering::Relaxed),
        st.requests.load(Ordering::Relaxed),
        st.prompt_tokens.load(Ordering::Relaxed),
        st.generated_tokens.load(Ordering::Relaxed),
        st.decode_steps.load(Ordering::Relaxed),
        st.decode_rows.load(Ordering::Relaxed),
        st.max_rows.load(Ordering::Relaxed),
    );
    let mut body = body;
    body.push_str("# TYPE gemma3n_time_to_first_token_seconds histogram\n");
    let mut cum = 0u64;
    for (i, le) in worker::TTFT_BUCKETS.iter().enumerate() {
        cum += st.ttft_buckets[i].load(Ordering::Relaxed);
        body.push_str(&format!(
            "gemma3n_time_to_first_token_seconds_bucket{{le=\"{le}\"}} {cum}\n"
        ));
    }
    cum += st.ttft_buckets[worker::TTFT_BUCKETS.len()].load(Ordering::Relaxed);
    body.push_str(&format!(
        "gemma3n_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {cum}\n\
         gemma3n_time_to_first_token_seconds_sum {}\n\
         gemma3n_time_to_first_token_seconds_count {cum}\n",
        st.ttft_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn models(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let created = now();
    let data: Vec<Value> = s
        .sizes
        .iter()
        .map(|(id, _)| json!({"id": id, "object": "model", "created": created, "owned_by": "gemma3n"}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status().as_u16();
        if status == 413 {
            ApiError::status(
                413,
                "invalid_request_error",
                "request body too large (see --max-body-mib)",
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {r}"), None)
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
}

/// What both completion kinds need after parsing.
struct Prepared {
    model_id: String,
    prompt: Vec<u32>,
    plan: Arc<SlicePlan>,
    params: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
    presence: f32,
    frequency: f32,
    stream: bool,
    include_usage: bool,
}

fn prepare(
    s: &AppState,
    model: &str,
    prompt: Vec<u32>,
    sp: Sampling,
) -> Result<Prepared, ApiError> {
    let plan = s
        .sizes
        .iter()
        .find(|(id, _)| id == model)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            let ids: Vec<&str> = s.sizes.iter().map(|(i, _)| i.as_str()).collect();
            ApiError {
                status: 404,
                kind: "invalid_request_error",
                message: format!(
                    "model `{model}` is not served here (available: {})",
                    ids.join(", ")
                ),
                param: Some("model"),
                code: Some("model_not_found"),
            }
        })?;
    if sp.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("only n = 1 is supported", Some("n")));
    }
    let mut params = s.model.defaults.clone();
    if let Some(t) = sp.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_request(
                "temperature must be in [0, 2]",
                Some("temperature"),
            ));
        }
        params.temperature = t;
        params.do_sample = t > 0.0;
    }
    if let Some(p) = sp.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_request(
                "top_p must be in (0, 1]",
                Some("top_p"),
            ));
        }
        params.top_p = p;
    }
    if let Some(k) = sp.top_k {
        params.top_k = k;
    }
    if let Some(m) = sp.min_p {
        if !(0.0..=1.0).contains(&m) {
            return Err(ApiError::bad_request(
                "min_p must be in [0, 1]",
                Some("min_p"),
            ));
        }
        params.min_p = m;
    }
    params.seed = sp.seed;
    let penalty = |v: Option<f32>, name: &'static str| -> Result<f32, ApiError> {
        let v = v.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::bad_request(
                format!("{name} must be in [-2, 2]"),
                Some(name),
            ));
        }
        Ok(v)
    };
    let presence = penalty(sp.presence_penalty, "presence_penalty")?;
    let frequency = penalty(sp.frequency_penalty, "frequency_penalty")?;
    let room = s.model.text.cfg.max_position_embeddings;
    if prompt.len() >= room {
        return Err(ApiError::bad_request(
            format!(
                "the prompt has {} tokens; this model's context is {room} tokens",
                prompt.len()
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    let max_tokens = match sp.max_completion_tokens.or(sp.max_tokens) {
        Some(0) => {
            return Err(ApiError::bad_request(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ))
        }
        Some(n) => n.min(room - prompt.len()),
        None => room - prompt.len(),
    };
    let stop = sp.stop.map(|x| x.into_vec()).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(|x| x.is_empty()) {
        return Err(ApiError::bad_request(
            "stop: at most 4 non-empty strings",
            Some("stop"),
        ));
    }
    Ok(Prepared {
        model_id: model.to_string(),
        prompt,
        plan,
        params,
        max_tokens,
        stop,
        presence,
        frequency,
        stream: sp.stream,
        include_usage: sp.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// A chat request's prompt ids and its media, in prompt order.
struct ChatInput {
    ids: Vec<u32>,
    images: Vec<gemma3n_model::vision::preprocess::PixelValues>,
    clips: Vec<Vec<f32>>,
}

fn unsupported(msg: impl Into<String>) -> ApiError {
    ApiError::status(422, "invalid_request_error", msg)
}

/// The bytes of a `data:` URL or of plain base64.
fn base64_payload(s: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    let b64 = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, d)) => d,
            None => {
                return Err(ApiError::bad_request(
                    format!("{what}: a data: URL must be base64 (`data:TYPE;base64,...`)"),
                    Some("messages"),
                ))
            }
        },
        None => s,
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            ApiError::bad_request(format!("{what}: invalid base64: {e}"), Some("messages"))
        })
}

fn chat_prompt(s: &AppState, req: &ChatRequest) -> Result<ChatInput, ApiError> {
    use gemma3n_model::audio::decode::decode_audio_bytes;
    use gemma3n_model::audio::features::windows;
    use gemma3n_model::vision::preprocess::preprocess_bytes;

    let template = s.model.template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions", None)
    })?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    let (mut images, mut clips) = (Vec::new(), Vec::new());
    let mut msgs = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(
                    format!("unsupported message role `{other}`"),
                    Some("messages"),
                ))
            }
        };
        let mut parts = Vec::new();
        match &m.content {
            None => parts.push(ContentPart::Text {
                text: String::new(),
            }),
            Some(Content::Text(t)) => parts.push(ContentPart::Text { text: t.clone() }),
            Some(Content::Parts(ps)) => {
                for p in ps {
                    match p.kind.as_str() {
                        "text" => {
                            let t = p.text.clone().ok_or_else(|| {
                                ApiError::bad_request("a text part needs `text`", Some("messages"))
                            })?;
                            parts.push(ContentPart::Text { text: t });
                        }
                        "image_url" => {
                            s.model.vision.as_ref().ok_or_else(|| {
                                unsupported("this model has no vision tower: it cannot take images")
                            })?;
                            let url = &p
                                .image_url
                                .as_ref()
                                .ok_or_else(|| ApiError::bad_request("an image_url part needs `image_url.url`", Some("messages")))?
                                .url;
                            if !url.starts_with("data:") {
                                return Err(unsupported("image_url: only data: URLs (base64) are accepted; the server fetches nothing"));
                            }
                            let bytes = base64_payload(url, "image_url")?;
                            let px = preprocess_bytes(&bytes, gemma3n_model::vision::preprocess::IMAGE_SIZE)
                                .map_err(|e| ApiError::bad_request(format!("image: {e}"), Some("messages")))?;
                            images.push(px);
                            parts.push(ContentPart::Image { url: None });
                        }
                        "input_audio" => {
                            if s.model.audio.is_none() {
                                return Err(unsupported("this model has no audio tower: it cannot take audio"));
                            }
                            let a = p.input_audio.as_ref().ok_or_else(|| {
                                ApiError::bad_request("an input_audio part needs `input_audio.data`", Some("messages"))
                            })?;
                            if let Some(f) = &a.format {
                                if !matches!(f.as_str(), "wav" | "mp3" | "flac" | "ogg") {
                                    return Err(unsupported(format!("input_audio format `{f}` (supported: wav, mp3, flac, ogg)")));
                                }
                            }
                            let bytes = base64_payload(&a.data, "input_audio")?;
                            let w = decode_audio_bytes(&bytes)
                                .map_err(|e| ApiError::bad_request(format!("audio: {e}"), Some("messages")))?;
                            if w.samples.is_empty() {
                                return Err(ApiError::bad_request("audio: no samples", Some("messages")));
                            }
                            // Longer than 30 s: consecutive windows, one audio block each.
                            for win in windows(&w.samples) {
                                clips.push(win.to_vec());
                                parts.push(ContentPart::Audio { url: None });
                            }
                        }
                        other => {
                            return Err(unsupported(format!(
                                "content parts of type `{other}` are not supported (text, image_url, input_audio are)"
                            )))
                        }
                    }
                }
            }
        }
        msgs.push(ChatMessage::new(role, parts));
    }
    let image_tokens = s
        .model
        .vision
        .as_ref()
        .map_or(0, |v| v.cfg.soft_tokens_per_image);
    let audio_tokens = s
        .model
        .audio
        .as_ref()
        .map_or(0, |a| a.cfg.soft_tokens_per_clip);
    let p = template
        .render_and_tokenize_with_media(&s.model.tokenizer, &msgs, true, image_tokens, audio_tokens)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    // Placeholder tokens typed into the text would shift the media: refuse them.
    let count = |id: Option<u32>| id.map_or(0, |id| p.ids.iter().filter(|&&x| x == id).count());
    let img_id = s.model.vision.as_ref().map(|v| v.cfg.image_token_id);
    let aud_id = s.model.audio.as_ref().map(|a| a.cfg.audio_token_id);
    if count(img_id) != images.len() * image_tokens || count(aud_id) != clips.len() * audio_tokens {
        return Err(ApiError::bad_request(
            "the message text contains image or audio placeholder tokens; send media as image_url / input_audio parts",
            Some("messages"),
        ));
    }
    Ok(ChatInput {
        ids: p.ids,
        images,
        clips,
    })
}

/// Queues the job; its events come back on the returned channel.
fn submit(
    s: &AppState,
    p: &Prepared,
    logprobs: Option<usize>,
    image_tokens: Vec<Vec<f32>>,
    clip_tokens: Vec<Vec<f32>>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Event>, ApiError> {
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt: p.prompt.clone(),
        plan: p.plan.clone(),
        params: p.params.clone(),
        max_tokens: p.max_tokens,
        stop: p.stop.clone(),
        logprobs,
        presence_penalty: p.presence,
        frequency_penalty: p.frequency,
        image_tokens,
        clip_tokens,
        events: tx,
        submitted: std::time::Instant::now(),
    };
    s.stats.queued.fetch_add(1, Ordering::Relaxed);
    match s.jobs.try_send(job) {
        Ok(()) => Ok(rx),
        Err(e) => {
            s.stats.queued.fetch_sub(1, Ordering::Relaxed);
            Err(match e {
                TrySendError::Full(_) => ApiError::status(
                    429,
                    "rate_limit_error",
                    "the request queue is full; retry shortly",
                ),
                TrySendError::Disconnected(_) => {
                    ApiError::status(500, "server_error", "the generation worker has stopped")
                }
            })
        }
    }
}

fn lp_json(chat: bool, lps: &[worker::TokenLogprob]) -> Value {
    if chat {
        json!({"content": lps.iter().map(|l| json!({
            "token": l.token, "logprob": l.logprob, "bytes": l.token.as_bytes(),
            "top_logprobs": l.top.iter().map(|(t, v)| json!({"token": t, "logprob": v, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()})
    } else {
        json!({
            "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
            "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
            "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(t, v)| (t.clone(), json!(v))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        })
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Collects a job's events into one response (non-streaming).
async fn collect(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<
    (
        String,
        Vec<worker::TokenLogprob>,
        &'static str,
        usize,
        usize,
    ),
    ApiError,
> {
    let (mut text, mut lps) = (String::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Delta { text: t, logprobs } => {
                text.push_str(&t);
                lps.extend(logprobs);
            }
            Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => return Ok((text, lps, finish_reason, prompt_tokens, completion_tokens)),
            Event::Error(e) => return Err(ApiError::status(500, "server_error", e)),
        }
    }
    Err(ApiError::status(
        500,
        "server_error",
        "generation ended without a result",
    ))
}

/// Streams a job's events as server-sent events; `chunk(delta_text, logprobs, finish)`
/// builds each chunk's JSON.
fn sse(
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    first: Option<Value>,
    include_usage: bool,
    usage_chunk: impl Fn(Value) -> Value + Send + 'static,
    chunk: impl Fn(&str, &[worker::TokenLogprob], Option<&str>) -> Value + Send + 'static,
) -> Response {
    let events = stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
    );
    let head = stream::iter(
        first.map(|v| Ok::<_, std::convert::Infallible>(SseEvent::default().data(v.to_string()))),
    );
    let body = events.flat_map(move |ev| {
        let out: Vec<Value> = match ev {
            Event::Delta { text, logprobs } => vec![chunk(&text, &logprobs, None)],
            Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut v = vec![chunk("", &[], Some(finish_reason))];
                if include_usage {
                    v.push(usage_chunk(usage(prompt_tokens, completion_tokens)));
                }
                v
            }
            Event::Error(e) => vec![ApiError::status(500, "server_error", e).body()],
        };
        stream::iter(
            out.into_iter()
                .map(|v| Ok(SseEvent::default().data(v.to_string()))),
        )
    });
    let done = stream::iter([Ok(SseEvent::default().data("[DONE]"))]);
    Sse::new(head.chain(body).chain(done)).into_response()
}

async fn chat_completions(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let req: ChatRequest = parse(body?)?;
    let input = chat_prompt(&s, &req)?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => {
            return Err(ApiError::bad_request(
                "top_logprobs must be at most 20",
                Some("top_logprobs"),
            ))
        }
        (true, n) => Some(n.unwrap_or(0)),
        (false, Some(_)) => {
            return Err(ApiError::bad_request(
                "top_logprobs needs logprobs: true",
                Some("top_logprobs"),
            ))
        }
        (false, None) => None,
    };
    let p = prepare(&s, &req.model, input.ids, req.sampling.clone())?;
    // Media go through the towers on a blocking thread, not on the generation worker.
    let (image_tokens, clip_tokens) = if input.images.is_empty() && input.clips.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let model = s.model.clone();
        let (images, clips) = (input.images, input.clips);
        tokio::task::spawn_blocking(move || worker::encode_media(&model, &images, &clips))
            .await
            .map_err(|e| ApiError::status(500, "server_error", e.to_string()))?
            .map_err(|e| ApiError::status(500, "server_error", e))?
    };
    let rx = submit(&s, &p, logprobs, image_tokens, clip_tokens)?;
    let id = format!("chatcmpl-{:x}", rand_id());
    let created = now();
    let model = p.model_id.clone();
    if p.stream {
        let head = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]});
        let (id2, model2) = (id.clone(), model.clone());
        let want_lp = logprobs.is_some();
        return Ok(sse(
            rx,
            Some(head),
            p.include_usage,
            move |u| json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": model2, "choices": [], "usage": u}),
            move |text, lps, finish| {
                let delta = if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta,
                        "logprobs": if want_lp && finish.is_none() { lp_json(true, lps) } else { Value::Null },
                        "finish_reason": finish}]})
            },
        ));
    }
    let (text, lps, finish, pt, ct) = collect(rx).await?;
    Ok(axum::Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": if logprobs.is_some() { lp_json(true, &lps) } else { Value::Null },
            "finish_reason": finish}],
        "usage": usage(pt, ct),
    }))
    .into_response())
}

async fn completions(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let req: CompletionRequest = parse(body?)?;
    let text = match &req.prompt {
        api::Prompt::One(t) => t.clone(),
        api::Prompt::Many(v) if v.len() == 1 => v[0].clone(),
        api::Prompt::Many(_) => {
            return Err(ApiError::bad_request(
                "prompt: exactly one string is supported",
                Some("prompt"),
            ))
        }
    };
    if text.is_empty() {
        return Err(ApiError::bad_request(
            "prompt must not be empty",
            Some("prompt"),
        ));
    }
    let logprobs = match req.logprobs {
        Some(n) if n > 5 => {
            return Err(ApiError::bad_request(
                "logprobs must be at most 5",
                Some("logprobs"),
            ))
        }
        other => other,
    };
    let prompt = s
        .model
        .tokenizer
        .encode(&text, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    let p = prepare(&s, &req.model, prompt, req.sampling.clone())?;
    let rx = submit(&s, &p, logprobs, Vec::new(), Vec::new())?;
    let id = format!("cmpl-{:x}", rand_id());
    let created = now();
    let model = p.model_id.clone();
    if p.stream {
        let (id2, model2) = (id.clone(), model.clone());
        let want_lp = logprobs.is_some();
        return Ok(sse(
            rx,
            None,
            p.include_usage,
            move |u| json!({"id": id2, "object": "text_completion", "created": created, "model": model2, "choices": [], "usage": u}),
            move |text, lps, finish| {
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text,
                        "logprobs": if want_lp && finish.is_none() { lp_json(false, lps) } else { Value::Null },
                        "finish_reason": finish}]})
            },
        ));
    }
    let (text, lps, finish, pt, ct) = collect(rx).await?;
    Ok(axum::Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text,
            "logprobs": if logprobs.is_some() { lp_json(false, &lps) } else { Value::Null },
            "finish_reason": finish}],
        "usage": usage(pt, ct),
    }))
    .into_response())
}

/// A request id: the time and a counter, mixed.
fn rand_id() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = t ^ N
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemma3n_model::config::ModelConfig;

    #[test]
    fn an_e4b_is_served_as_every_official_size() {
        // The E4B text config (defaults of the released checkpoints).
        let cfg = ModelConfig::from_json(&json!({"model_type": "gemma3n_text"}), "(e4b)")
            .unwrap()
            .text;
        let ids = model_ids("gemma-3n", &cfg);
        let names: Vec<&str> = ids.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(names[0], "gemma-3n-E4B");
        assert!(ids[0].1.is_full(&cfg));
        for want in ["gemma-3n-E2B", "gemma-3n-E3.39B", "gemma-3n-E2.98B-block"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // Every official size but the full one, each once.
        assert_eq!(ids.len(), official_slices().len());
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        // A sliced plan really drops layers or narrows FFNs.
        let e2b = &ids.iter().find(|(i, _)| i == "gemma-3n-E2B").unwrap().1;
        assert_eq!(e2b.layers.len(), 30);
    }
}
