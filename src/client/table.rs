//! Plain text tables for the terminal, with a colour per mailbox state when stdout is one.

/// ANSI colour of a mailbox state: green when working, yellow while it sorts itself out, red
/// when a human must act, dim when switched off.
pub fn state_colour(state: &str) -> &'static str {
    match state {
        "active" => "\x1b[32m",
        "starting" | "backoff" => "\x1b[33m",
        "disabled" => "\x1b[2m",
        _ => "\x1b[31m",
    }
}

const RESET: &str = "\x1b[0m";

/// Renders rows under a header, columns padded to their widest cell; the cells of column
/// `state_column` (None: no colour at all) are coloured by the state they name.
pub fn render(header: &[&str], rows: &[Vec<String>], state_column: Option<usize>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&cell);
                let visible = strip_len(&cell);
                out.push_str(&" ".repeat(widths[i].saturating_sub(visible) + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        let mut cells = row.clone();
        if let Some(cell) = state_column.and_then(|c| cells.get_mut(c)) {
            *cell = format!("{}{cell}{RESET}", state_colour(cell));
        }
        out.push_str(&line(cells));
    }
    out
}

/// Visible length of a cell (without ANSI escapes).
fn strip_len(s: &str) -> usize {
    let mut n = 0;
    let mut escape = false;
    for c in s.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// A text cut to `max` characters (an ellipsis marks the cut).
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_with_and_without_colour() {
        let rows = vec![
            vec!["a@x".to_string(), "active".to_string(), "1".to_string()],
            vec!["longer@x".to_string(), "needs_reconsent".to_string(), "22".to_string()],
        ];
        let plain = render(&["ADDRESS", "STATE", "N"], &rows, None);
        assert_eq!(
            plain,
            "ADDRESS   STATE            N\na@x       active           1\nlonger@x  needs_reconsent  22\n"
        );
        let coloured = render(&["ADDRESS", "STATE", "N"], &rows, Some(1));
        assert!(coloured.contains("\x1b[32mactive\x1b[0m           1"), "{coloured:?}");
        assert!(coloured.contains("\x1b[31mneeds_reconsent\x1b[0m  22"), "{coloured:?}");
    }
}
