//! Showing strings that came from a recording (argv, module paths, function
//! names, heap-snapshot names) on a terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// True for what a terminal acts on instead of showing: C0 controls
/// (including newline and tab), DEL, and C1 controls (U+0080-U+009F, where
/// U+009B is a one-character CSI).
fn is_terminal_control(c: char) -> bool {
    let u = c as u32;
    u < 0x20 || u == 0x7f || (0x80..0xa0).contains(&u)
}

/// `s` with every control character made visible, so printing it can neither
/// drive the terminal (clear the screen, set the title, move the cursor) nor
/// break a line: ESC becomes `\e`, newline `\n`, carriage return `\r`, tab
/// `\t`, other C0 controls and DEL `\xNN`, C1 controls `\u{NN}`. Borrowed
/// when there is nothing to escape.
pub fn escape_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_terminal_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_terminal_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_terminal_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_become_visible_escapes() {
        assert!(matches!(escape_terminal("plain ü →"), Cow::Borrowed(_)));
        assert_eq!(
            escape_terminal("\x1b]0;TITLE\x07\x1b[2J"),
            "\\e]0;TITLE\\x07\\e[2J"
        );
        assert_eq!(escape_terminal("a\nb\r\tc\x7f\0"), "a\\nb\\r\\tc\\x7f\\x00");
        assert_eq!(escape_terminal("x\u{9b}2Jy\u{85}"), "x\\u{9b}2Jy\\u{85}");
        let e = escape_terminal("\x1b\x07\u{9b}\n");
        assert!(!e.chars().any(is_terminal_control), "{e}");
    }
}
