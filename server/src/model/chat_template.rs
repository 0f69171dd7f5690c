//! The model's own Jinja chat template, rendered with `minijinja`.
//!
//! Templates are written for Python's Jinja2 and call Python string methods (`.strip()`,
//! `.startswith()`); minijinja-contrib's pycompat layer provides them.

use super::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// One chat message as templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
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
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
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
    pub const RESERVED: [&'static str; 5] = [
        "messages",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
    ];

    /// Renders a conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// As [`ChatTemplate::render`], with more variables for the template (vLLM's
    /// `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`); the [`Self::RESERVED`] names
    /// are the renderer's own.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        let own = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
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
        assert_eq!(t.render_with(&[], true, off).unwrap(), "no");
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
