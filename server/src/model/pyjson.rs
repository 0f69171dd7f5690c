//! JSON written as Python's `json.dumps` writes it, for templates' `tojson` filter and for text
//! a model is meant to read as its training data had it.
//!
//! Why not minijinja's own `tojson`: it escapes `<`, `>`, `&` and `'` (HTML safety), while
//! Hugging Face's renderer overrides Jinja's filter with plain `json.dumps(ensure_ascii=False)`;
//! a tool's description or schema in a prompt would otherwise read `\u003cb\u003e`, not the
//! text the model was trained on. Python also writes `1.0` and `1e-05` where Rust would not.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// `json.dumps`'s options that templates pass.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Spaces per level: each item on its own line (`None`: one line).
    pub indent: Option<usize>,
    /// Between items and between a key and its value: `(", ", ": ")` on one line, `(",", ": ")`
    /// with an indent, as Python's defaults.
    pub separators: (String, String),
    pub sort_keys: bool,
    /// Non-ASCII characters as `\uXXXX` (Hugging Face's default is false).
    pub ensure_ascii: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            indent: None,
            separators: (", ".into(), ": ".into()),
            sort_keys: false,
            ensure_ascii: false,
        }
    }
}

/// The `tojson` filter as Hugging Face's renderer defines it:
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub fn tojson_filter(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let mut opts = DumpOptions {
        indent,
        ..DumpOptions::default()
    };
    if indent.is_some() {
        opts.separators.0 = ",".into();
    }
    if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
        let [item, key] = <[String; 2]>::try_from(seps).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson's separators are (item, key)",
            )
        })?;
        opts.separators = (item, key);
    }
    opts.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    opts.ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    Ok(Value::from_safe_string(dumps(value, &opts)?))
}

/// `value` as `json.dumps(value, **opts)` writes it.
pub fn dumps(value: &Value, opts: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write(value, opts, 0, &mut out)?;
    Ok(out)
}

/// A JSON value as `json.dumps` writes it by default (`", "`, `": "`, one line, keys in order).
pub fn dumps_json(value: &serde_json::Value) -> String {
    // A serde_json value always converts; an error here would be a bug in this module.
    dumps(
        &Value::from(minijinja::value::Serde(value)),
        &DumpOptions::default(),
    )
    .unwrap_or_default()
}

fn newline(opts: &DumpOptions, depth: usize, out: &mut String) {
    if let Some(n) = opts.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * depth));
    }
}

fn write(value: &Value, opts: &DumpOptions, depth: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => out.push_str(&python_float(f64::try_from(value.clone())?)),
        ValueKind::String => write_string(value.as_str().unwrap_or_default(), opts, out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort_by_key(key_text);
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.separators.0);
                }
                newline(opts, depth + 1, out);
                write_string(&key_text(key), opts, out);
                out.push_str(&opts.separators.1);
                write(&value.get_item(key)?, opts, depth + 1, out)?;
            }
            newline(opts, depth, out);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.separators.0);
                }
                newline(opts, depth + 1, out);
                write(item, opts, depth + 1, out)?;
            }
            newline(opts, depth, out);
            out.push(']');
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a value of kind {other}"),
            ))
        }
    }
    Ok(())
}

/// A map key as Python writes it: strings as they are, numbers and booleans as text.
fn key_text(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        _ => key.to_string(),
    }
}

fn write_string(s: &str, opts: &DumpOptions, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (opts.ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(x)` of a Python float: the shortest digits that read back, positional for exponents
/// from −4 to 15, else `1e-05` / `1.5e+16`.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.5e16", "-1e-5", "0e0".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let text = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{text}")
    } else {
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        let cases = [
            (1.0, "1.0"),
            (-0.5, "-0.5"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (2.5e-300, "2.5e-300"),
            (0.0, "0.0"),
            (f64::INFINITY, "Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float(x), want, "{x}");
        }
    }

    #[test]
    fn objects_keep_their_order_and_html_characters() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"z": "<b>&'é\u0001\n", "a": [1, 2.0, true, null, {}], "e": []}"#,
        )
        .unwrap();
        assert_eq!(
            dumps_json(&v),
            r#"{"z": "<b>&'é\u0001\n", "a": [1, 2.0, true, null, {}], "e": []}"#
        );
        let opts = DumpOptions {
            indent: Some(2),
            separators: (",".into(), ": ".into()),
            sort_keys: true,
            ensure_ascii: true,
        };
        let v = Value::from(minijinja::value::Serde(&v));
        assert_eq!(
            dumps(&v, &opts).unwrap(),
            "{\n  \"a\": [\n    1,\n    2.0,\n    true,\n    null,\n    {}\n  ],\n  \"e\": [],\n  \"z\": \"<b>&'\\u00e9\\u0001\\n\"\n}"
        );
        let emoji = Value::from("😀");
        assert_eq!(dumps(&emoji, &opts).unwrap(), r#""\ud83d\ude00""#);
    }
}
