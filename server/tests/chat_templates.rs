//! lowbit's renderer against Jinja2 as Hugging Face transformers configures it, on the models'
//! own chat templates (Qwen2.5, Qwen3, Llama 3.1/3.2, Hermes 3, DeepSeek-R1's Qwen distill,
//! Mistral Nemo, gpt-oss's harmony format) and conversations with tools, tool calls and tool results: the text must be
//! byte-identical, and where Jinja2 raises (Llama 3.x given two calls in one turn), so must
//! lowbit. Fixture: `data/chat_templates/expected.json`, written by `render.py` there.

use lowbit::model::chat_template::{ChatMessage, ChatTemplate};
use serde::Deserialize;

#[derive(Deserialize)]
struct Render {
    template: String,
    file: String,
    bos_token: String,
    eos_token: String,
    case: String,
    messages: Vec<ChatMessage>,
    tools: Option<Vec<serde_json::Value>>,
    variables: serde_json::Map<String, serde_json::Value>,
    add_generation_prompt: bool,
    text: Option<String>,
    error: Option<String>,
}

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/chat_templates")
        .join(name)
}

#[test]
fn templates_render_as_jinja2_renders_them() {
    let renders: Vec<Render> =
        serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap();
    assert!(renders.len() >= 90, "{}", renders.len());
    // gpt-oss prints `strftime_now`'s day: the fixture's is render.py's fixed one.
    let today = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", "", "")
        .unwrap()
        .render_with(&[], None, false, &serde_json::Map::new())
        .unwrap();
    let mut failures = Vec::new();
    for r in &renders {
        let source = std::fs::read_to_string(data(&r.file)).unwrap();
        let template = ChatTemplate::new(&source, &r.bos_token, &r.eos_token).unwrap();
        let got = template
            .render_with(
                &r.messages,
                r.tools.as_deref(),
                r.add_generation_prompt,
                &r.variables,
            )
            .map(|text| {
                text.replace(
                    &format!("Current date: {today}"),
                    "Current date: 2026-12-07",
                )
            });
        let what = format!(
            "{} / {} (generation prompt: {})",
            r.template, r.case, r.add_generation_prompt
        );
        match (&r.text, &r.error, got) {
            (Some(want), _, Ok(got)) if *want == got => {}
            (Some(want), _, Ok(got)) => {
                let at = want
                    .char_indices()
                    .zip(got.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(want.len().min(got.len()), |((i, _), _)| i);
                let from = want.floor_char_boundary(at.saturating_sub(60));
                failures.push(format!(
                    "{what}: differs at byte {at}\n  jinja2: {:?}\n  lowbit: {:?}",
                    &want[from..want.floor_char_boundary((at + 60).min(want.len()))],
                    &got[from.min(got.len())..got.floor_char_boundary((at + 60).min(got.len()))]
                ));
            }
            (Some(_), _, Err(e)) => failures.push(format!("{what}: lowbit fails: {e}")),
            (None, Some(_), Err(_)) => {}
            (None, error, Ok(_)) => {
                failures.push(format!("{what}: jinja2 raised {error:?}, lowbit rendered"))
            }
            (None, None, Err(_)) => unreachable!(),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_fixture_covers_tools_in_every_template() {
    let renders: Vec<Render> =
        serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap();
    for t in [
        "qwen2.5", "qwen3", "llama3.1", "llama3.2", "hermes3", "gpt-oss",
    ] {
        let with_calls = renders
            .iter()
            .find(|r| r.template == t && r.case == "tool_results" && r.add_generation_prompt)
            .and_then(|r| r.text.as_deref())
            .unwrap_or_else(|| panic!("{t}"));
        assert!(with_calls.contains("Paris"), "{t}: {with_calls}");
        assert!(with_calls.contains("get_time"), "{t}: the tools are listed");
    }
    // Qwen3's shows the thinking sent back with a call in a tool loop; gpt-oss's too, from
    // `reasoning_content` (its template reads `thinking`).
    for (t, thinking) in [
        ("qwen3", "<think>\nThe user wants the weather"),
        (
            "gpt-oss",
            "<|channel|>analysis<|message|>The user wants the weather",
        ),
    ] {
        let loop_ = renders
            .iter()
            .find(|r| r.template == t && r.case == "reasoning_tool_loop" && r.add_generation_prompt)
            .and_then(|r| r.text.as_deref())
            .unwrap();
        assert!(loop_.contains(thinking), "{t}: {loop_}");
    }
    assert!(renders
        .iter()
        .flat_map(|r| &r.messages)
        .all(|m| m.thinking.is_none()));
}
