//! The model's own Jinja chat template, rendered with `minijinja`.
//!
//! Templates are written for Python's Jinja2 and call Python string methods (`.strip()`,
//! `.startswith()`); minijinja-contrib's pycompat layer provides them. Hugging Face's renderer
//! adds two more things templates use: `strftime_now(format)` (today's date in the system
//! prompt: Llama 3.x, Mistral Small, Granite, gpt-oss) and the `{% generation %}` block (marks
//! the assistant's text for training masks; a no-op when rendering). It also renders as
//! Jinja2 is configured there — `trim_blocks` and `lstrip_blocks` on (a block tag's line leaves
//! no blank line or indent behind) — and replaces `tojson` with Python's `json.dumps`
//! (`pyjson.rs`), so a template prints what the model saw in training, byte for byte
//! (`tests/chat_templates.rs` compares with Jinja2 on the models' own templates).

use super::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// One chat message as templates expect it (Hugging Face's convention): the tool fields only
/// where a message has them (templates test `'tool_calls' in message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's calls: `{"id", "type": "function", "function": {"name", "arguments"}}`,
    /// the arguments an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A tool message's call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool message's function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant's earlier thinking (Qwen3's template shows it within a tool loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same under gpt-oss's name (its template shows the thinking of a tool call's turn
    /// from `thinking`): filled from `reasoning_content` for templates that read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
            reasoning_content: None,
            thinking: None,
        }
    }
}

/// A compiled chat template with the special-token strings it may print.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the strings templates see under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| ModelError::ChatTemplate(e.to_string()))?,
        );
        env.add_filter("tojson", super::pyjson::tojson_filter);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |format: String| {
            strftime(&format, std::time::SystemTime::now())
        });
        env.add_template_owned(TEMPLATE_NAME, without_generation_blocks(source))
            .map_err(|e| ModelError::ChatTemplate(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names a template sees besides the caller's variables ([`ChatTemplate::render_with`]).
    pub const RESERVED: [&'static str; 6] = [
        "messages",
        "tools",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
    ];

    /// Renders a conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            messages,
            None,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// As [`ChatTemplate::render`], with more variables for the template (vLLM's
    /// `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`); the [`Self::RESERVED`] names
    /// are the renderer's own. `tools` are OpenAI's tool objects (`{"type": "function",
    /// "function": {…}}`), for templates that describe them; `none` to the template otherwise.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        // gpt-oss's template reads an earlier turn's thinking as `thinking`.
        let messages: std::borrow::Cow<'_, [ChatMessage]> = if self.source.contains(".thinking")
            && messages
                .iter()
                .any(|m| m.reasoning_content.is_some() && m.thinking.is_none())
        {
            messages
                .iter()
                .cloned()
                .map(|mut m| {
                    if m.thinking.is_none() {
                        m.thinking.clone_from(&m.reasoning_content);
                    }
                    m
                })
                .collect()
        } else {
            std::borrow::Cow::Borrowed(messages)
        };
        let own = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(&*messages)),
            tools => minijinja::Value::from(minijinja::value::Serde(tools)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let theirs = minijinja::Value::from(minijinja::value::Serde(variables));
        tmpl.render(minijinja::context! { ..own, ..theirs })
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                ModelError::ChatTemplate(msg)
            })
    }
}

/// `source` with `{% generation %}` / `{% endgeneration %}` made `{% if true %}` / `{% endif %}`
/// (whitespace control kept).
fn without_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner =
            tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        let replacement = match inner {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&tag.replacen(inner, r, 1)),
            None => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// `time` (UTC) in C's `strftime` `format`: the specifiers templates use (`%Y %m %d %e %H %M
/// %S %y %b %B %a %A %j %p %I %%`); any other is kept as written.
fn strftime(format: &str, time: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:2}"),
            Some('H') => out += &format!("{hour:02}"),
            Some('I') => out += &format!("{:02}", (hour + 11) % 12 + 1),
            Some('p') => out += if hour < 12 { "AM" } else { "PM" },
            Some('M') => out += &format!("{minute:02}"),
            Some('S') => out += &format!("{second:02}"),
            Some('j') => out += &format!("{yday:03}"),
            Some('b') => out += &month_name[..3],
            Some('B') => out += month_name,
            Some('a') => out += &day_name[..3],
            Some('A') => out += day_name,
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages|length == 0 %}{{ raise_exception('need a message') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("need a message"), "{e}");
    }

    #[test]
    fn strftime_writes_the_date_as_python_does() {
        // 2024-02-29 13:05:09 UTC, a Thursday: day 60 of a leap year.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_211_909);
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S, %d %b %Y, %A %B %j, %I %p %y %e%% %Q", t),
            "2024-02-29 13:05:09, 29 Feb 2024, Thursday February 060, 01 PM 24 29% %Q"
        );
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_735_689_599);
        assert_eq!(strftime("%Y-%m-%d %a %j", t), "2024-12-31 Tue 366");
    }

    #[test]
    fn hugging_face_additions_render() {
        let t = ChatTemplate::new(
            "{%- for m in messages %}{%- generation -%} [{{ m.content }}] {%- endgeneration %}{% endfor %}{{ strftime_now('%Y') | length }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "hi")], true).unwrap(),
            "[hi]4"
        );
    }

    #[test]
    fn block_tags_on_their_own_lines_leave_nothing_behind_as_in_jinja2() {
        // Jinja2 with Hugging Face's trim_blocks and lstrip_blocks renders this "U: hi\n".
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.role == \"user\" %}\nU: {{ m.content }}\n  {% endif %}\n{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let msgs = [
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "yo"),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "U: hi\n");
    }

    #[test]
    fn callers_variables_reach_the_template() {
        let t = ChatTemplate::new(
            "{% if enable_thinking is defined and not enable_thinking %}no{% else %}yes{% endif %}",
            "",
            "",
        )
        .unwrap();
        let off = serde_json::json!({"enable_thinking": false});
        let off = off.as_object().unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "yes");
        assert_eq!(t.render_with(&[], None, true, off).unwrap(), "no");
    }

    #[test]
    fn python_string_methods_and_special_tokens_are_available() {
        let t = ChatTemplate::new("{{ bos_token }}{% for m in messages %}{{ m.content.strip() }}{% endfor %}{{ eos_token }}", "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi  ")], false)
                .unwrap(),
            "<s>hi</s>"
        );
    }
}
