use super::*;
use crate::engine::grammar::Grammars;

fn tool(name: &str) -> Tool {
    serde_json::from_value(json!({"type": "function", "function": {"name": name,
        "description": "d",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}},
                       "required": ["x"], "additionalProperties": false}}}))
    .unwrap()
}

fn template(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/chat_templates")
        .join(file);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn auto_takes_the_templates_own_syntax() {
    let auto = |file: &str| ToolCallParser::Auto.syntax(Some(&template(file)), None, None);
    assert_eq!(auto("Qwen-Qwen2.5-7B-Instruct.jinja"), ToolSyntax::Hermes);
    assert_eq!(auto("Qwen-Qwen3-0.6B.jinja"), ToolSyntax::Hermes);
    assert_eq!(
        auto("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"),
        ToolSyntax::Hermes
    );
    assert_eq!(
        auto("meta-llama-Llama-3.1-8B-Instruct.jinja"),
        ToolSyntax::Llama3Json
    );
    assert_eq!(
        auto("meta-llama-Llama-3.2-3B-Instruct.jinja"),
        ToolSyntax::Llama3Json
    );
    // A template whose tool syntax lowbit does not read natively, and none at all.
    assert_eq!(
        auto("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
        ToolSyntax::Generic
    );
    assert_eq!(
        auto("mistralai-Mistral-Nemo-Instruct-2407.jinja"),
        ToolSyntax::Mistral { marker: None }
    );
    assert_eq!(
        ToolCallParser::Auto.syntax(None, None, None),
        ToolSyntax::Generic
    );
    // gpt-oss's harmony calls where the vocabulary has the markers, else the generic format.
    let ids = crate::api::tool_harmony::HarmonyIds {
        start: 1,
        end: 2,
        message: 3,
        channel: 4,
        constrain: 5,
    };
    let gpt_oss = template("openai-gpt-oss-120b.jinja");
    assert_eq!(
        ToolCallParser::Auto.syntax(Some(&gpt_oss), None, Some(ids)),
        ToolSyntax::Harmony { ids }
    );
    assert_eq!(
        ToolCallParser::Auto.syntax(Some(&gpt_oss), None, None),
        ToolSyntax::Generic
    );
    assert_eq!(
        ToolCallParser::Auto.syntax(Some(&template("Qwen-Qwen3-0.6B.jinja")), None, Some(ids)),
        ToolSyntax::Hermes
    );
    // The flag overrides.
    assert_eq!(
        ToolCallParser::Generic.syntax(Some(&template("Qwen-Qwen3-0.6B.jinja")), None, None),
        ToolSyntax::Generic
    );
    assert_eq!(
        ToolCallParser::Hermes.syntax(None, None, None),
        ToolSyntax::Hermes
    );
}

#[test]
fn hermes_replies_read_as_text_and_calls() {
    let r = read_reply(
        ToolSyntax::Hermes,
        "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": \"{\\\"x\\\": 2}\"}\n</tool_call>",
    );
    assert_eq!(r.content.as_deref(), Some("Let me check."));
    assert_eq!(
        r.calls,
        vec![
            ("f".to_string(), "{\"x\": 1}".to_string()),
            ("g".to_string(), "{\"x\": 2}".to_string())
        ]
    );
    let only = read_reply(
        ToolSyntax::Hermes,
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    );
    assert_eq!(only.content, None);
    assert_eq!(only.calls.len(), 1);
    // Plain text, a call cut short, a block that is not a call: all text as written.
    for text in [
        "Paris is sunny.",
        "<tool_call>\n{\"name\": \"f\", \"argu",
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call> and more",
    ] {
        let r = read_reply(ToolSyntax::Hermes, text);
        assert_eq!(r.content.as_deref(), Some(text));
        assert!(r.calls.is_empty(), "{text}");
    }
}

#[test]
fn llama_replies_are_one_call_or_text() {
    let r = read_reply(
        ToolSyntax::Llama3Json,
        "{\"name\": \"f\", \"parameters\": {\"x\": 3}}",
    );
    assert_eq!(r.content, None);
    assert_eq!(r.calls, vec![("f".to_string(), "{\"x\": 3}".to_string())]);
    let tagged = read_reply(
        ToolSyntax::Llama3Json,
        "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}",
    );
    assert_eq!(tagged.calls.len(), 1);
    for text in ["It is sunny.", "{\"name\": \"f\"", "{\"other\": 1}"] {
        let r = read_reply(ToolSyntax::Llama3Json, text);
        assert_eq!(r.content.as_deref(), Some(text));
        assert!(r.calls.is_empty());
    }
}

/// Streams `text` in pieces of `size` characters; what the stream sends, gathered.
fn streamed(syntax: ToolSyntax, text: &str, size: usize) -> NativeReply {
    let mut s = NativeStream::new(syntax);
    let chars: Vec<char> = text.chars().collect();
    let mut pieces = Vec::new();
    for chunk in chars.chunks(size) {
        pieces.extend(s.push(&chunk.iter().collect::<String>()));
    }
    pieces.extend(s.finish());
    let mut content = String::new();
    let mut calls = Vec::new();
    for p in pieces {
        match p {
            NativePiece::Content(t) => content.push_str(&t),
            NativePiece::Call {
                index,
                name,
                arguments,
            } => {
                assert_eq!(index, calls.len());
                calls.push((name, arguments));
            }
            NativePiece::CallStart { index, name } => {
                assert_eq!(index, calls.len());
                calls.push((name, String::new()));
            }
            NativePiece::Arguments { index, text } => {
                assert_eq!(index + 1, calls.len());
                calls[index].1.push_str(&text);
            }
        }
    }
    assert_eq!(s.calls(), calls.len());
    NativeReply {
        content: (!content.trim().is_empty()).then(|| content.trim().to_string()),
        calls,
    }
}

#[test]
fn a_stream_sends_what_the_whole_reply_reads_as() {
    let replies = [
        (ToolSyntax::Hermes, "Let me check <b>that</b>.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>"),
        (ToolSyntax::Hermes, "\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>"),
        (ToolSyntax::Hermes, "Just text, a < b, <tool and <tool_cal."),
        (ToolSyntax::Hermes, "<tool_call>\n{\"name\": \"f\", \"argu"),
        (ToolSyntax::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"s\": \"a}\\n</tool b\", \"t\": [{}]}}\n</tool_call>"),
        // Not the grammar's layout: read whole when the block closes.
        (ToolSyntax::Hermes, "<tool_call>\n{\"arguments\": {\"x\": 1}, \"name\": \"f\"}\n</tool_call>"),
        (ToolSyntax::Llama3Json, "{\"name\": \"f\", \"parameters\": {\"x\": 3}}"),
        (ToolSyntax::Llama3Json, "  It is {sunny}."),
        (ToolSyntax::Llama3Json, "{\"name\": \"f\""),
    ];
    for (syntax, text) in replies {
        let whole = read_reply(syntax, text);
        for size in [1, 2, 3, 7, 1000] {
            let s = streamed(syntax, text, size);
            assert_eq!(s.calls, whole.calls, "{text:?} by {size}");
            assert_eq!(
                s.content.as_deref(),
                whole.content.as_deref().map(str::trim),
                "{text:?} by {size}"
            );
        }
    }
}

#[test]
fn hermes_arguments_stream_as_they_grow() {
    let mut s = NativeStream::new(ToolSyntax::Hermes);
    assert_eq!(s.push("<tool_call>\n{\"name\": \"f\", \"argum"), vec![]);
    assert_eq!(
        s.push("ents\": {\"x\""),
        vec![
            NativePiece::CallStart {
                index: 0,
                name: "f".into()
            },
            NativePiece::Arguments {
                index: 0,
                text: "{\"x\"".into()
            }
        ]
    );
    // A brace that may end the block waits for what follows it.
    assert_eq!(
        s.push(": 1}"),
        vec![NativePiece::Arguments {
            index: 0,
            text: ": 1".into()
        }]
    );
    assert_eq!(
        s.push("}\n</tool_"),
        vec![NativePiece::Arguments {
            index: 0,
            text: "}".into()
        }]
    );
    assert_eq!(s.push("call>"), vec![]);
    assert_eq!(s.calls(), 1);
    // Cut short while its arguments stream: the rest as written.
    let mut s = NativeStream::new(ToolSyntax::Hermes);
    let mut pieces = s.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}");
    pieces.extend(s.finish());
    let text: String = pieces
        .into_iter()
        .filter_map(|p| match p {
            NativePiece::Arguments { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(text, "{\"x\": 1}");
}

#[test]
fn text_that_may_become_the_tag_is_held_back() {
    let mut s = NativeStream::new(ToolSyntax::Hermes);
    assert_eq!(
        s.push("Sure <tool"),
        vec![NativePiece::Content("Sure ".into())]
    );
    assert_eq!(s.push("_call>\n{\"name\": \"f\", "), vec![]);
    assert_eq!(
        s.push("\"arguments\": {}}\n</tool_call>"),
        vec![
            NativePiece::CallStart {
                index: 0,
                name: "f".into()
            },
            NativePiece::Arguments {
                index: 0,
                text: "{}".into()
            }
        ]
    );
    assert_eq!(s.finish(), vec![]);
    assert_eq!(s.calls(), 1);
}

/// One token per character of the text the tests write, `<eos>` first (id 0).
const CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_<>/{}[]\":, 0123456789.\n";

fn grammars() -> Grammars {
    let mut bytes = vec![b"\xff<eos>".to_vec()];
    bytes.extend(CHARS.chars().map(|c| c.to_string().into_bytes()));
    Grammars::from_token_bytes(bytes, vec![0])
}

/// Whether the grammar lets `text` be written and then end.
fn accepts(format: &OutputFormat, text: &str) -> bool {
    let g = grammars();
    let grammar = g.compile(format).unwrap();
    let mut c = grammar.start();
    let n = CHARS.len() + 1;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        let id = 1 + CHARS
            .chars()
            .position(|x| x == ch)
            .expect("a char of CHARS");
        let mask = c.mask(&vec![0.0; n]).unwrap();
        if mask[id] != 0.0 {
            return false;
        }
        if c.accept(id as u32) {
            // The grammar is complete: only if the text is too.
            return chars.peek().is_none();
        }
    }
    c.mask(&vec![0.0; n]).unwrap()[0] == 0.0
}

#[test]
fn hermes_grammars_allow_text_then_valid_calls() {
    let tools = [tool("f"), tool("g")];
    let hermes = |mode, parallel, thinking| {
        output_format(ToolSyntax::Hermes, &tools, mode, parallel, thinking, None)
    };
    let call = |name: &str, x: &str| {
        format!(
            "<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{\"x\": {x}}}}}\n</tool_call>"
        )
    };
    let auto = hermes(ToolMode::Auto, true, Thinking::No);
    assert!(accepts(&auto, "just text, a <b> c"));
    assert!(accepts(&auto, ""));
    assert!(accepts(&auto, &call("f", "1")));
    assert!(accepts(
        &auto,
        &format!("let me see\n{}\n{}", call("f", "1"), call("g", "22"))
    ));
    assert!(!accepts(&auto, &call("h", "1")), "an unknown tool");
    assert!(!accepts(&auto, &call("f", "\"a\"")), "arguments off schema");
    assert!(!accepts(&auto, &format!("{} then text", call("f", "1"))));
    let one = hermes(ToolMode::Auto, false, Thinking::No);
    assert!(!accepts(
        &one,
        &format!("{}\n{}", call("f", "1"), call("g", "2"))
    ));
    let required = hermes(ToolMode::Required, true, Thinking::No);
    assert!(accepts(&required, &call("g", "2")));
    assert!(accepts(
        &required,
        &format!("{}\n{}", call("f", "1"), call("g", "2"))
    ));
    assert!(!accepts(&required, "text"));
    assert!(!accepts(&required, ""));
    let thinking = hermes(ToolMode::Required, true, Thinking::May);
    assert!(accepts(
        &thinking,
        &format!("<think>\nuse f.\n</think>\n\n{}", call("f", "1"))
    ));
    assert!(accepts(&thinking, &call("f", "1")));
    assert!(!accepts(&thinking, "<think>\nhm\n</think>\n\nno call"));
    let open = hermes(ToolMode::Required, true, Thinking::Open);
    assert!(accepts(
        &open,
        &format!("use f.\n</think>\n\n{}", call("f", "1"))
    ));
}

#[test]
fn with_a_response_format_an_answer_is_json_of_its_schema() {
    let tools = [tool("f")];
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
                        "required": ["a"], "additionalProperties": false});
    let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>";
    for thinking in [Thinking::No, Thinking::May] {
        let hermes = output_format(
            ToolSyntax::Hermes,
            &tools,
            ToolMode::Auto,
            true,
            thinking,
            Some(&schema),
        );
        assert!(accepts(&hermes, "{\"a\": 12}"));
        assert!(accepts(&hermes, call));
        assert!(!accepts(&hermes, "free text"));
        assert!(!accepts(&hermes, "{\"b\": 1}"));
        assert_eq!(
            accepts(&hermes, "<think>\nhm\n</think>\n\n{\"a\": 1}"),
            thinking == Thinking::May
        );
    }
    let llama = output_format(
        ToolSyntax::Llama3Json,
        &tools,
        ToolMode::Auto,
        true,
        Thinking::No,
        Some(&schema),
    );
    assert!(accepts(&llama, "{\"a\": 12}"));
    assert!(accepts(
        &llama,
        "{\"name\": \"f\", \"parameters\": {\"x\": 1}}"
    ));
    assert!(!accepts(&llama, "text"));
}

#[test]
fn llama_grammars_allow_text_or_one_call() {
    let tools = [tool("f")];
    let auto = output_format(
        ToolSyntax::Llama3Json,
        &tools,
        ToolMode::Auto,
        true,
        Thinking::No,
        None,
    );
    let call = "{\"name\": \"f\", \"parameters\": {\"x\": 1}}";
    assert!(accepts(&auto, call));
    assert!(accepts(&auto, "it is sunny {really}"));
    assert!(!accepts(
        &auto,
        "{\"name\": \"g\", \"parameters\": {\"x\": 1}}"
    ));
    assert!(!accepts(&auto, &format!("{call}{call}")));
    let required = output_format(
        ToolSyntax::Llama3Json,
        &tools,
        ToolMode::Required,
        true,
        Thinking::No,
        None,
    );
    assert!(accepts(&required, call));
    assert!(!accepts(&required, "text"));
}

#[test]
fn mistral_ids_are_nine_letters_and_digits() {
    assert_eq!(
        mistral_call_id("call_0123456789abcdef0123456789abcdef"),
        "789abcdef"
    );
    assert_eq!(mistral_call_id("call12345"), "call12345");
    assert_eq!(mistral_call_id("c-1"), "0000000c1");
}

#[test]
fn mistral_replies_are_a_list_of_calls_or_text() {
    let syntax = ToolSyntax::Mistral { marker: None };
    let list = r#"[{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]"#;
    // With the marker's text, or without it (a control token is not decoded).
    for text in [format!("[TOOL_CALLS]{list}"), list.to_string()] {
        let r = read_reply(syntax, &text);
        assert_eq!(r.content, None);
        assert_eq!(
            r.calls,
            vec![
                ("f".to_string(), "{\"x\": 1}".to_string()),
                ("g".to_string(), "{}".to_string())
            ]
        );
        for size in [1, 3, 1000] {
            assert_eq!(streamed(syntax, &text, size).calls, r.calls, "{text}");
        }
    }
    for text in ["It is sunny.", "[TOOL_CALLS][{\"name\": \"f\"", "[1, 2]"] {
        let r = read_reply(syntax, text);
        assert_eq!(r.content.as_deref(), Some(text));
        for size in [1, 3, 1000] {
            let s = streamed(syntax, text, size);
            assert!(s.calls.is_empty());
            assert_eq!(s.content.as_deref(), Some(text));
        }
    }
}

#[test]
fn mistral_grammars_open_calls_with_the_marker() {
    let tools = [tool("f"), tool("g")];
    let syntax = ToolSyntax::Mistral { marker: None };
    let auto = output_format(syntax, &tools, ToolMode::Auto, true, Thinking::No, None);
    // The vocabulary has no "[TOOL_CALLS]" token here: its text is written out.
    let two = "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": 1}}, {\"name\": \"g\", \"arguments\": {\"x\": 2}}]";
    assert!(accepts(&auto, two));
    assert!(accepts(&auto, "plain text"));
    assert!(!accepts(&auto, "[not a call]"));
    assert!(!accepts(
        &auto,
        "[TOOL_CALLS][{\"name\": \"h\", \"arguments\": {\"x\": 1}}]"
    ));
    let one = output_format(
        syntax,
        &tools,
        ToolMode::Required,
        false,
        Thinking::No,
        None,
    );
    assert!(!accepts(&one, two));
    assert!(accepts(
        &one,
        "[TOOL_CALLS][{\"name\": \"g\", \"arguments\": {\"x\": 2}}]"
    ));
    assert!(!accepts(&one, "text"));

    // A control token: the grammar asks for that id, and no text can stand in for it.
    let mut bytes = vec![b"\xff<eos>".to_vec()];
    bytes.extend(CHARS.chars().map(|c| c.to_string().into_bytes()));
    let marker = bytes.len() as u32;
    bytes.push(b"\xff[TOOL_CALLS]".to_vec());
    let n = bytes.len();
    let g = Grammars::from_token_bytes(bytes, vec![0]);
    let syntax = ToolSyntax::Mistral {
        marker: Some(marker),
    };
    let required = output_format(syntax, &tools, ToolMode::Required, true, Thinking::No, None);
    let mut c = g.compile(&required).unwrap().start();
    let allowed: Vec<usize> = {
        let m = c.mask(&vec![0.0; n]).unwrap();
        (0..n).filter(|&t| m[t] == 0.0).collect()
    };
    assert_eq!(allowed, vec![marker as usize]);
    assert!(!c.accept(marker));
    let open = 1 + CHARS.chars().position(|x| x == '[').unwrap();
    assert_eq!(
        c.mask(&vec![0.0; n]).unwrap()[open],
        0.0,
        "the list follows"
    );
}

#[test]
fn the_mistral_marker_is_found_only_as_a_control_token() {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::AddedToken;
    let vocab = [("a".to_string(), 0), ("<unk>".to_string(), 1)]
        .into_iter()
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let with = |special: bool| {
        let mut inner = tokenizers::Tokenizer::new(model.clone());
        inner.add_tokens(&[AddedToken::from("[TOOL_CALLS]", special)]);
        crate::model::Tokenizer::new(inner, None, vec![1]).unwrap()
    };
    assert_eq!(mistral_marker(&with(true)), Some(2));
    assert_eq!(mistral_marker(&with(false)), None);
}
