//! Escaping for every context a target-controlled string can reach.

/// Escapes text for a terminal: every C0/C1 control and DEL becomes a
/// visible escape (`\e`, `\n`, `\x07`, `\u{9b}`). The one function every
/// text output uses (it lives in `offheap-format` so that `offheap-node`,
/// which does not depend on this crate, shares it).
pub use offheap_format::escape_terminal as terminal;

/// Escapes text for HTML/XML element content and quoted attribute values:
/// `& < > " '`. Control characters other than tab/newline (invalid in XML)
/// become U+FFFD so an SVG stays well-formed.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{fffe}' || c == '\u{ffff}' => {
                out.push('\u{fffd}')
            }
            c => out.push(c),
        }
    }
    out
}

/// Serializes `v` as JSON that is safe inside an HTML `<script>` element:
/// `<`, `>` and `&` become `\u003c`, `\u003e`, `\u0026` (so neither
/// `</script>` nor `<!--` can appear), and U+2028/U+2029 are escaped for
/// old JavaScript parsers. The result is still valid JSON with the same value.
pub fn json_for_script(v: &serde_json::Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A frame name fit for a collapsed-stack line: `;` (the separator) becomes
/// `:`, line breaks and other control characters become spaces, and an empty
/// name becomes `[unknown]`.
pub fn folded_frame(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => ' ',
            c => c,
        })
        .collect();
    let t = out.trim();
    if t.is_empty() {
        "[unknown]".into()
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup() {
        assert_eq!(
            html("<script>alert(1)</script>&\"'"),
            "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"
        );
        assert_eq!(html("a\u{1}b"), "a\u{fffd}b");
    }

    #[test]
    fn json_cannot_close_a_script() {
        let v = serde_json::json!({"n": "</script><!-- \u{2028}\u{2029} & >"});
        let s = json_for_script(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        assert!(!s.contains('\u{2028}') && !s.contains('\u{2029}'));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn folded_names() {
        assert_eq!(folded_frame("a;b\nc\r"), "a:b c");
        assert_eq!(folded_frame(" \n"), "[unknown]");
    }
}
