//! Text that came from outside (an ISO's volume id, `.disk/info` and boot menu titles, what a
//! user typed as notes or an OS name) made safe to print on a terminal: control characters
//! (escape sequences that colour the terminal or set its title, carriage returns, line breaks
//! that break a table) and the invisible characters that make text look like other text
//! (zero-width ones, right-to-left overrides) are shown escaped, as `\x1b` or `\u{202e}`,
//! instead of acting.

use std::borrow::Cow;

/// Whether `c` is invisible or reorders the text around it: zero-width characters, the
/// bidirectional controls, the byte order mark, the soft hyphen.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `text` with every control and invisible character escaped (one line, nothing that acts on
/// the terminal).
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// Like [`for_terminal`], keeping line breaks (and tabs) for multi-line text such as notes.
pub fn lines_for_terminal(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let kept = |c: char| keep_lines && matches!(c, '\n' | '\t');
    if !text
        .chars()
        .any(|c| (c.is_control() && !kept(c)) || is_invisible(c))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if kept(c) {
            out.push(c);
        } else if c.is_control() && (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else if c.is_control() || is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_line_breaks_are_shown_not_run() {
        assert_eq!(for_terminal("Debian 12"), "Debian 12");
        assert!(matches!(for_terminal("Debian 12"), Cow::Borrowed(_)));
        assert_eq!(for_terminal("\u{1b}[31mred"), "\\x1b[31mred");
        assert_eq!(
            for_terminal("\u{1b}]0;title\u{7}x"),
            "\\x1b]0;title\\x07x",
            "an OSC sequence cannot set the title"
        );
        assert_eq!(for_terminal("two\nlines\r"), "two\\x0alines\\x0d");
        assert_eq!(for_terminal("a\u{9b}b"), "a\\x9bb", "C1 controls too");
        assert_eq!(lines_for_terminal("two\nlines\u{1b}"), "two\nlines\\x1b");
    }

    #[test]
    fn invisible_and_reordering_characters_are_shown() {
        assert_eq!(for_terminal("web\u{202e}gpj.exe"), "web\\u{202e}gpj.exe");
        assert_eq!(for_terminal("a\u{200b}b"), "a\\u{200b}b");
        assert!(is_invisible('\u{2066}') && !is_invisible('é'));
    }
}
