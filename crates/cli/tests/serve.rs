//! `gemma3n serve` over HTTP on the tiny fixture with the tiny tokenizer: the OpenAI API's
//! shapes (chat and text completions, streamed and not, usage, logprobs, models), exactness
//! against `gemma3n run` (greedy), stop strings, and the error cases (OpenAI error bodies).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::{json, Value};

const NAME: &str = "tiny_text_f32";

/// `gemma3n run` (greedy) on the tiny model: the generated text.
fn run_greedy(prompt: &str, max_tokens: usize) -> String {
    let dir = model_with_tokenizer(NAME);
    let n = max_tokens.to_string();
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-tokens",
            &n,
        ],
        None,
    );
    r.expect_ok("run");
    r.stdout.trim_end_matches('\n').to_string()
}

fn start(extra: &[&str]) -> Server {
    start_dir(model_with_tokenizer(NAME), extra)
}

/// One HTTP/1.1 request; returns (status, headers, body).
fn http(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> (u16, String, String) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        s.addr,
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn post(s: &Server, path: &str, v: &Value) -> (u16, Value) {
    let (st, _, body) = http(s, "POST", path, Some(&v.to_string()), &[]);
    (
        st,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// The `data:` payloads of a server-sent-event body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.to_string())
        .collect()
}

fn model_id(s: &Server) -> String {
    let (st, _, body) = http(s, "GET", "/v1/models", None, &[]);
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    v["data"][0]["id"].as_str().unwrap().to_string()
}

#[test]
fn chat_completion_equals_run_and_streams_the_same_text() {
    let s = start(&[]);
    let model = model_id(&s);
    let req = json!({"model": model, "messages": [{"role": "user", "content": "w40 w41 w42"}],
        "temperature": 0, "max_tokens": 8});
    let (st, v) = post(&s, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    eprintln!("chat completion: {v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let usage = &v["usage"];
    let ct = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&ct));
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + ct
    );
    let fr = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(fr == "stop" || fr == "length", "{fr}");
    if fr == "length" {
        assert_eq!(ct, 8);
    }

    // The same prompt through `gemma3n run` (greedy): the same text.
    assert_eq!(run_greedy("w40 w41 w42", 8), text);

    // Streamed: chunks that add up to the same text, then usage, then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (st, head, body) = http(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(&sreq.to_string()),
        &[],
    );
    assert_eq!(st, 200);
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
    }
    assert_eq!(streamed, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"].as_u64().unwrap(), ct);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], fr);
}

#[test]
fn completions_logprobs_and_stop_strings() {
    let s = start(&[]);
    let model = model_id(&s);
    let req = json!({"model": model, "prompt": "w7 w8 w9", "temperature": 0, "max_tokens": 6, "logprobs": 3});
    let (st, v) = post(&s, "/v1/completions", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(tokens.len(), n);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one, its logprob the largest; all <= 0.
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(
            (chosen - best).abs() < 1e-5 && chosen <= 0.0,
            "{chosen} vs {best}"
        );
    }
    // A stop string cuts the text before it, finish_reason stop.
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() >= 2 {
        let stop = words[1];
        let req = json!({"model": model, "prompt": "w7 w8 w9", "temperature": 0, "max_tokens": 6, "stop": [stop]});
        let (st, v) = post(&s, "/v1/completions", &req);
        assert_eq!(st, 200);
        let cut = v["choices"][0]["text"].as_str().unwrap();
        assert_eq!(cut, &text[..text.find(stop).unwrap()]);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn errors_use_the_openai_error_body() {
    let s = start(&["--api-key", "sekret"]);
    let auth = "Authorization: Bearer sekret";
    let (st, _, body) = http(&s, "GET", "/v1/models", None, &[]);
    assert_eq!(st, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (st, _, body) = http(&s, "GET", "/v1/models", None, &[auth]);
    assert_eq!(st, 200, "{body}");
    let model = serde_json::from_str::<Value>(&body).unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_request_error"),
        (json!({"model": "nope", "messages": [{"role": "user", "content": "w1"}]}).to_string(), 404, "invalid_request_error"),
        (json!({"model": model, "messages": []}).to_string(), 400, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "user", "content": "w1"}], "n": 2}).to_string(), 400, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "user", "content": "w1"}], "temperature": 5}).to_string(), 400, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "user", "content": "w1"}], "max_tokens": 0}).to_string(), 400, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "wizard", "content": "w1"}]}).to_string(), 400, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "user", "content": [{"type": "video_url"}]}]}).to_string(), 422, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "user", "content": "w1 ".repeat(5000)}]}).to_string(), 400, "invalid_request_error"),
    ];
    for (body, want, kind) in cases {
        let (st, _, out) = http(&s, "POST", "/v1/chat/completions", Some(&body), &[auth]);
        assert_eq!(st, want, "{body:.80} -> {out}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["error"]["type"], kind, "{out}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    // Unknown endpoint; health and metrics need no key.
    let (st, _, _) = http(&s, "GET", "/v1/nothing", None, &[auth]);
    assert_eq!(st, 404);
    let (st, _, body) = http(&s, "GET", "/health", None, &[]);
    assert_eq!((st, body.contains("ok")), (200, true));
    let (st, _, body) = http(&s, "GET", "/metrics", None, &[]);
    assert_eq!(st, 200);
    assert!(body.contains("gemma3n_queue_depth"), "{body}");
}

/// Standard base64 (the test's own encoder).
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The tiny multimodal fixture (text + vision + audio towers) with the tiny tokenizer, plus
/// the image and audio token strings at the fixture's ids.
fn multimodal_dir() -> TempDir {
    let src = repo_root().join("tests/fixtures/audio/tiny_audio");
    let t = dir_with_tokenizer(&src, 272, "serve-mm");
    let mut tok: Value = serde_json::from_str(&tokenizer_json(272)).unwrap();
    let specials = [
        (250, "<start_of_image>"),
        (256, "<end_of_image>"),
        (257, "<image_soft_token>"),
        (251, "<start_of_audio>"),
        (264, "<end_of_audio>"),
        (265, "<audio_soft_token>"),
    ];
    // The strings take those ids in the vocabulary itself (an added token whose string the
    // model lacks would get a new id past the vocabulary).
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    for (id, content) in specials {
        vocab.retain(|_, v| v.as_u64() != Some(id));
        vocab.insert(content.to_string(), json!(id));
    }
    let added = tok["added_tokens"].as_array_mut().unwrap();
    for (id, content) in [
        (250, "<start_of_image>"),
        (256, "<end_of_image>"),
        (257, "<image_soft_token>"),
        (251, "<start_of_audio>"),
        (264, "<end_of_audio>"),
        (265, "<audio_soft_token>"),
    ] {
        added.push(
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    std::fs::write(t.join("tokenizer.json"), tok.to_string()).unwrap();
    t
}

#[test]
fn image_and_audio_parts_equal_run_with_the_same_files() {
    let image = repo_root().join("tests/fixtures/vision/images/coffee_97x61.bmp");
    let audio = repo_root().join("tests/fixtures/audio/speech_b.wav");
    let s = start_dir(multimodal_dir(), &[]);
    let model = model_id(&s);
    let req = json!({"model": model, "temperature": 0, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": format!("data:image/bmp;base64,{}", b64(&std::fs::read(&image).unwrap()))}},
        {"type": "input_audio", "input_audio": {"data": b64(&std::fs::read(&audio).unwrap()), "format": "wav"}},
        {"type": "text", "text": "w5 w6"},
    ]}]});
    let (st, v) = post(&s, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // Image block (16 + 2) and audio block (188 + 2) are in the prompt.
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 16 + 188,
        "{v}"
    );

    let dir = multimodal_dir();
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--image",
            image.to_str().unwrap(),
            "--audio",
            audio.to_str().unwrap(),
            "--prompt",
            "w5 w6",
            "--temperature",
            "0",
            "--max-tokens",
            "5",
        ],
        None,
    );
    r.expect_ok("run --image --audio");
    assert_eq!(r.stdout.trim_end_matches('\n'), text);

    // Media errors.
    let bad = |content: Value| json!({"model": model, "messages": [{"role": "user", "content": content}]});
    for (content, want) in [
        (
            json!([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]),
            422,
        ),
        (
            json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]),
            400,
        ),
        (
            json!([{"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(b"not a png"))}}]),
            400,
        ),
        (
            json!([{"type": "input_audio", "input_audio": {"data": b64(b"RIFF junk"), "format": "wav"}}]),
            400,
        ),
        (
            json!([{"type": "input_audio", "input_audio": {"data": b64(b"x"), "format": "aac"}}]),
            422,
        ),
        // A placeholder typed as text.
        (
            json!([{"type": "text", "text": "w5 <image_soft_token> w6"}]),
            400,
        ),
    ] {
        let (st, v) = post(&s, "/v1/chat/completions", &bad(content.clone()));
        assert_eq!(st, want, "{content:.100} -> {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
}

#[test]
fn concurrent_requests_are_batched_exactly() {
    // 32 greedy requests at once (continuous batching, several in one forward pass) return
    // the same text as the same requests one at a time.
    let s = start(&["--max-batch", "32", "--max-queue", "64"]);
    let model = model_id(&s);
    let req = |i: usize| {
        let words: Vec<String> = (0..1 + i % 7)
            .map(|k| format!("w{}", 20 + (i * 13 + k * 5) % 200))
            .collect();
        json!({"model": model, "messages": [{"role": "user", "content": words.join(" ")}],
            "temperature": 0, "max_tokens": 4 + i % 9})
    };
    // One request's reply text.
    let ask = |i: usize| {
        let (st, v) = post(&s, "/v1/chat/completions", &req(i));
        assert_eq!(st, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let alone: Vec<String> = (0..32).map(ask).collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..32)
            .map(|i| {
                let ask = &ask;
                sc.spawn(move || ask(i))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    // The metrics saw them all and nothing is left running (the worker updates its counts
    // right after the last answers go out).
    let mut m = String::new();
    for _ in 0..200 {
        m = http(&s, "GET", "/metrics", None, &[]).2;
        if m.contains("gemma3n_active_sequences 0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(m.contains("gemma3n_requests_total 64"), "{m}");
    assert!(m.contains("gemma3n_active_sequences 0"), "{m}");
    // Several sequences did share decode passes.
    let max_rows: usize = m
        .lines()
        .find_map(|l| l.strip_prefix("gemma3n_decode_max_rows "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_rows > 1, "{m}");
    // Every request's time to first token is in the histogram.
    assert!(
        m.contains("gemma3n_time_to_first_token_seconds_count 64"),
        "{m}"
    );
}

#[test]
fn a_prompt_prefilled_in_pieces_gives_the_same_answer() {
    // Prefill 8 tokens per step while another request decodes: the same greedy text as
    // `gemma3n run` (one prefill).
    let s = start(&["--prefill-chunk", "8"]);
    let model = model_id(&s);
    let prompt: Vec<String> = (0..40)
        .map(|i| format!("w{}", 30 + (i * 17) % 150))
        .collect();
    let prompt = prompt.join(" ");
    let req = json!({"model": model, "messages": [{"role": "user", "content": prompt}],
        "temperature": 0, "max_tokens": 6});
    let other = json!({"model": model, "messages": [{"role": "user", "content": "w9"}],
        "temperature": 0, "max_tokens": 30});
    let text = std::thread::scope(|sc| {
        let bg = sc.spawn(|| post(&s, "/v1/chat/completions", &other));
        let (st, v) = post(&s, "/v1/chat/completions", &req);
        assert_eq!(st, 200, "{v}");
        assert_eq!(bg.join().unwrap().0, 200);
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(run_greedy(&prompt, 6), text);
}
