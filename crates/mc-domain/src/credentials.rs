//! Credential lines in an agent's workspace files: how Mission Control writes the agent's
//! `BASE_URL`, `AUTH_TOKEN`, `AGENT_ID` ... and how everyone reads them back.
//!
//! One parser serves both sides (the server re-reading what it wrote during a template
//! sync, and the agent-side client), so the format written and the format read cannot
//! drift apart. Provisioning writes a Markdown list of code spans (``- `KEY=value` ``);
//! bare `KEY=value` lines are read too.

/// Reads one `KEY=value` line: bare, or as a Markdown list item and/or code span
/// (``- `KEY=value` ``). Keys are upper-case letters, digits and `_`; empty values are
/// no values.
pub fn credential_line(line: &str) -> Option<(&str, &str)> {
    let mut text = line.trim();
    for bullet in ["- ", "* ", "+ "] {
        if let Some(rest) = text.strip_prefix(bullet) {
            text = rest.trim_start();
            break;
        }
    }
    if let Some(inner) = text.strip_prefix('`') {
        text = inner.strip_suffix('`')?;
    }
    let (key, value) = text.split_once('=')?;
    let key = key.trim();
    let value = value.trim();
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    (key_ok && !value.is_empty()).then_some((key, value))
}

/// The first value of `key` among the credential lines of `text`.
pub fn credential_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(credential_line)
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// The line Mission Control writes for `key` (what [`credential_line`] reads back).
pub fn format_credential_line(key: &str, value: &str) -> String {
    format!("- `{key}={value}`")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn credential_lines_are_read_bare_and_as_backticked_list_items() {
        assert_eq!(
            credential_line("BASE_URL=http://h:8000"),
            Some(("BASE_URL", "http://h:8000"))
        );
        assert_eq!(
            credential_line("- `AUTH_TOKEN=abc=def`"),
            Some(("AUTH_TOKEN", "abc=def"))
        );
        assert_eq!(
            credential_line("  * `AGENT_ID=42`  "),
            Some(("AGENT_ID", "42"))
        );
        assert_eq!(credential_line("`BOARD_ID=x`"), Some(("BOARD_ID", "x")));
    }

    #[test]
    fn prose_and_empty_values_are_not_credential_lines() {
        for line in [
            "# Tools",
            "Use the token below.",
            "- `AUTH_TOKEN=`",
            "- `AUTH_TOKEN=abc",
            "lower=case",
            "- the URL is http://x?a=b",
            "",
        ] {
            assert_eq!(credential_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn the_first_value_of_a_key_wins() {
        let text = "# TOOLS\n\nAUTH_TOKEN=first\n- `AUTH_TOKEN=second`\n";
        assert_eq!(credential_value(text, "AUTH_TOKEN"), Some("first"));
        assert_eq!(credential_value(text, "BASE_URL"), None);
    }

    proptest! {
        #[test]
        fn every_written_line_reads_back(
            key in "[A-Z][A-Z0-9_]{0,20}",
            value in "[!-_a-~][ -_a-~]{0,60}[!-_a-~]",
        ) {
            // Values are printable ASCII without backticks, not starting or ending in
            // spaces: tokens, URLs, UUIDs, names.
            let line = format_credential_line(&key, &value);
            prop_assert_eq!(credential_line(&line), Some((key.as_str(), value.as_str())));
        }
    }
}
