//! `lowbit-chat`: a streaming chat against lowbit's OpenAI-compatible API.
//!
//! ```text
//! cargo run --release -p lowbit-client-example -- "What is 2+2?"
//! ```
//!
//! `LOWBIT_URL` (default `http://127.0.0.1:8000`), `LOWBIT_API_KEY` (if the server has
//! `--api-key`) and `LOWBIT_MODEL` (default: the first model that `/v1/models` lists) pick the
//! server and the model. The reply is a stream of server-sent events: one `data: {json}` line per
//! chunk, a blank line between events, and `data: [DONE]` at the end; each chunk's
//! `choices[0].delta.content` is printed as it arrives.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lowbit-chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let url = std::env::var("LOWBIT_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".to_owned());
    let url = url.trim_end_matches('/');
    let api_key = std::env::var("LOWBIT_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is 2+2?".to_owned());

    // No overall timeout: a long reply may stream for a while.
    let client = reqwest::blocking::Client::builder().timeout(None).build()?;
    let with_auth = |req: reqwest::blocking::RequestBuilder| match &api_key {
        Some(key) => req.bearer_auth(key),
        None => req,
    };

    let model = match std::env::var("LOWBIT_MODEL") {
        Ok(model) if !model.is_empty() => model,
        _ => {
            let models: Value =
                check(with_auth(client.get(format!("{url}/v1/models"))).send()?)?.json()?;
            models["data"][0]["id"]
                .as_str()
                .ok_or("the server lists no model")?
                .to_owned()
        }
    };

    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "stream": true,
    });
    let response = check(
        with_auth(client.post(format!("{url}/v1/chat/completions")))
            .json(&body)
            .send()?,
    )?;

    let mut out = std::io::stdout().lock();
    for line in BufReader::new(response).lines() {
        let line = line?;
        let Some(data) = line.trim_end_matches('\r').strip_prefix("data:") else {
            continue; // blank separators, comments, `event:`/`id:` fields
        };
        let data = data.trim_start();
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data)?;
        if let Some(error) = chunk.get("error") {
            return Err(format!("error in the stream: {error}").into());
        }
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            out.write_all(content.as_bytes())?;
            out.flush()?;
        }
    }
    writeln!(out)?;
    Ok(())
}

/// The response itself when its status is a success; otherwise an error with the server's
/// message (`{"error": {"message": ...}}`) when it sent one.
fn check(response: reqwest::blocking::Response) -> Result<reqwest::blocking::Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(format!("HTTP {status}: {message}").into())
}
