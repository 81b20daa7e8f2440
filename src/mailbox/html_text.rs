//! HTML → plain text for routing's `body.text`, in one pass over the input.
//!
//! Laid out as a reader sees the mail: whitespace collapsed, block elements on their own
//! lines, paragraphs separated by one blank line, list items marked, table cells side by side,
//! `<pre>` kept as written, links' URLs listed as numbered footnotes, scripts, styles and
//! comments dropped, character references decoded. No line wrapping. It is a renderer for
//! agents and keyword rules, not a browser: CSS (hidden elements, say) is not applied.
//!
//! One pass and no DOM because it runs for every message of a backlog: a full HTML parser
//! cost more CPU than everything else the daemon does per message.

/// Plain text from HTML: at most one blank line in a row, no `\r`, trimmed.
pub fn html_to_text(html: &str) -> String {
    // Mail is mostly text: the text is nearly as long as the HTML, and growing it would copy it.
    let mut r = Renderer::with_capacity(html.len());
    let mut rest = html;
    loop {
        let lt = r.text(rest);
        if lt == rest.len() {
            break;
        }
        rest = r.markup(&rest[lt..]);
    }
    r.finish()
}

/// Bytes that end a literal run of character data.
fn is_special(b: u8) -> bool {
    matches!(b, b'&' | b'<' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Where a literal run may end, eight bytes at a time: the high bit of each byte that is `&`,
/// `<`, whitespace other than a space, or a space before such a byte or before a space (the
/// last byte's follower is unknown, so a space there is marked too). Every byte that ends a
/// run is marked; a marked byte may also be a false alarm, which the caller rules out.
fn stops(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let eq = |c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    let space = eq(b' ');
    let whitespace = space | eq(b'\t') | eq(b'\n') | eq(b'\r') | eq(b'\x0c');
    let hard = eq(b'&') | eq(b'<');
    let special = whitespace | hard;
    hard | (whitespace & !space) | (space & ((special >> 8) | (HIGH << 56)))
}

/// The first byte from `i` on that may end a literal run (see [`stops`]), or the length.
fn next_stop(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mask = stops(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        if mask != 0 {
            return i + (mask.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() {
        let b = bytes[i];
        if is_special(b) && (b != b' ' || bytes.get(i + 1).is_none_or(|&n| is_special(n))) {
            return i;
        }
        i += 1;
    }
    i
}

/// Elements that start on a new line.
const BLOCK: &[&str] = &[
    "address",
    "article",
    "aside",
    "center",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "header",
    "hr",
    "main",
    "nav",
    "ol",
    "section",
    "summary",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "tr",
    "ul",
    "caption",
];
/// Elements set off by a blank line.
const PARAGRAPH: &[&str] = &["blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "p", "pre"];
/// Elements whose content is never text.
const RAW_SKIPPED: &[&str] = &["script", "style", "title", "template", "noscript", "xml"];

#[derive(Default)]
struct Renderer {
    out: String,
    /// Line breaks the next text must start after (2 = a blank line).
    want_breaks: u8,
    /// A collapsed space is due before the next text on this line.
    want_space: bool,
    /// Inside `<pre>` (nested depth): whitespace is kept.
    pre: usize,
    /// Open lists: `None` for `<ul>`, the next number for `<ol>`.
    lists: Vec<Option<u32>>,
    /// The open link: its `href` and where its text began in `out`.
    link: Option<(String, usize)>,
    /// URLs of links whose text is not the URL itself, in order.
    footnotes: Vec<String>,
}

impl Renderer {
    fn with_capacity(n: usize) -> Self {
        Self {
            out: String::with_capacity(n),
            ..Self::default()
        }
    }

    /// Asks for at least `n` line breaks before the next text.
    fn breaks(&mut self, n: u8) {
        self.want_breaks = self.want_breaks.max(n);
        self.want_space = false;
    }

    /// Writes what is due before a visible character.
    fn settle(&mut self) {
        if self.want_breaks > 0 {
            if !self.out.is_empty() {
                let have = self.out.bytes().rev().take_while(|&b| b == b'\n').count() as u8;
                for _ in have..self.want_breaks {
                    self.out.push('\n');
                }
            }
            self.want_breaks = 0;
            self.want_space = false;
        } else if self.want_space {
            if !self.out.is_empty() && !self.out.ends_with('\n') {
                self.out.push(' ');
            }
            self.want_space = false;
        }
    }

    fn visible(&mut self, c: char) {
        self.settle();
        self.out.push(c);
    }

    /// Character data up to the next `<` (returned, or the length): literal runs are copied
    /// whole, whitespace and character references are looked at one by one. A single space
    /// between two characters of a run is part of the run: it comes out as it is whatever the
    /// mode, and mail is mostly words with one space between them.
    fn text(&mut self, s: &str) -> usize {
        let bytes = s.as_bytes();
        let (mut run, mut i) = (0, 0);
        loop {
            // A space that starts a run collapses with what came before it: looked at below.
            if !(i == run && bytes.get(i) == Some(&b' ')) {
                i = next_stop(bytes, i);
            }
            let Some(&b) = bytes.get(i) else { break };
            if !is_special(b) {
                // A false alarm of the eight-byte scan.
                i += 1;
                continue;
            }
            if b == b' ' && run < i && bytes.get(i + 1).is_some_and(|&n| !is_special(n)) {
                i += 2;
                continue;
            }
            if run < i {
                self.settle();
                self.out.push_str(&s[run..i]);
            }
            match b {
                b'<' => return i,
                b'&' => {
                    let (decoded, used) = entity(&s[i..]);
                    match decoded {
                        Some(c) => self.character(c),
                        None => self.visible('&'),
                    }
                    i += used;
                }
                _ => {
                    self.whitespace(b);
                    i += 1;
                }
            }
            run = i;
        }
        if run < bytes.len() {
            self.settle();
            self.out.push_str(&s[run..]);
        }
        bytes.len()
    }

    /// [`Renderer::text`] as first written, a byte at a time: the oracle its tests compare with.
    #[cfg(test)]
    fn text_plain(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let (mut run, mut i) = (0, 0);
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'&' && !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
                i += 1;
                continue;
            }
            if run < i {
                self.settle();
                self.out.push_str(&s[run..i]);
            }
            if b == b'&' {
                let (decoded, used) = entity(&s[i..]);
                match decoded {
                    Some(c) => self.character(c),
                    None => self.visible('&'),
                }
                i += used;
            } else {
                self.whitespace(b);
                i += 1;
            }
            run = i;
        }
        if run < bytes.len() {
            self.settle();
            self.out.push_str(&s[run..]);
        }
    }

    /// A decoded character reference: whitespace ones collapse like literal whitespace.
    fn character(&mut self, c: char) {
        match c {
            // A no-break space is a space to a reader (and to keyword rules), but it never collapses.
            '\u{a0}' => self.visible(' '),
            '\u{ad}' | '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{feff}' => {}
            ' ' | '\t' | '\n' | '\r' | '\x0c' => self.whitespace(c as u8),
            c => self.visible(c),
        }
    }

    fn whitespace(&mut self, c: u8) {
        if self.pre > 0 {
            match c {
                b'\r' => {}
                b'\n' => {
                    self.settle();
                    self.out.push('\n');
                }
                _ => self.visible(' '),
            }
        } else if self.want_breaks == 0 {
            self.want_space = true;
        }
    }

    /// Handles the markup at the start of `s` (which begins with `<`); returns what follows it.
    fn markup<'a>(&mut self, s: &'a str) -> &'a str {
        if let Some(body) = s.strip_prefix("<!--") {
            return body.find("-->").map_or("", |end| &body[end + 3..]);
        }
        let bytes = s.as_bytes();
        let closing = bytes.get(1) == Some(&b'/');
        let name_start = if closing { 2 } else { 1 };
        let starts_name = bytes.get(name_start).is_some_and(u8::is_ascii_alphabetic);
        if !starts_name {
            if matches!(bytes.get(1), Some(b'!' | b'?')) || (closing && bytes.get(2) == Some(&b'>')) {
                // A doctype, a processing instruction or `</>`: not text.
                return s.find('>').map_or("", |end| &s[end + 1..]);
            }
            self.visible('<');
            return &s[1..];
        }
        let name_len = bytes[name_start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'_')))
            .unwrap_or(bytes.len() - name_start);
        // Lowercased on the stack: a mail's tags are many, and a String each cost an allocation.
        let mut lower = [0u8; KNOWN_NAME_MAX];
        let name = lowercase_name(&bytes[name_start..name_start + name_len], &mut lower);
        // The tag ends at the first `>` outside a quoted attribute value.
        let mut quote = None;
        let mut end = None;
        for (i, &b) in bytes.iter().enumerate().skip(name_start + name_len) {
            match (quote, b) {
                (None, b'"' | b'\'') => quote = Some(b),
                (Some(q), b) if b == q => quote = None,
                (None, b'>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            // An unterminated tag swallows the rest, as a browser would.
            return "";
        };
        let attrs = &s[name_start + name_len..end];
        let after = &s[end + 1..];
        if closing {
            self.close(name);
            return after;
        }
        if RAW_SKIPPED.contains(&name) && !attrs.trim_end().ends_with('/') {
            return skip_raw(after, name);
        }
        self.open(name, attrs);
        after
    }

    fn open(&mut self, name: &str, attrs: &str) {
        match name {
            "br" => {
                self.settle();
                self.out.push('\n');
            }
            "li" => {
                self.breaks(1);
                let depth = self.lists.len().saturating_sub(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}. ", *n - 1)
                    }
                    _ => "* ".to_string(),
                };
                self.settle();
                for _ in 0..depth {
                    self.out.push_str("  ");
                }
                self.out.push_str(&marker);
            }
            "ul" | "ol" => {
                self.breaks(1);
                let start = attribute(attrs, "start")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(1);
                self.lists.push((name == "ol").then_some(start));
            }
            "td" | "th" => self.want_space = self.want_breaks == 0,
            "a" => {
                if let Some(href) = attribute(attrs, "href") {
                    self.settle();
                    self.link = Some((href, self.out.len()));
                }
            }
            "pre" => {
                self.breaks(2);
                self.pre += 1;
            }
            _ if PARAGRAPH.contains(&name) => self.breaks(2),
            _ if BLOCK.contains(&name) => self.breaks(1),
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        match name {
            "ul" | "ol" => {
                self.lists.pop();
                self.breaks(1);
            }
            "a" => self.end_link(),
            "pre" => {
                self.pre = self.pre.saturating_sub(1);
                self.breaks(2);
            }
            "li" | "dd" | "dt" => self.breaks(1),
            _ if PARAGRAPH.contains(&name) => self.breaks(2),
            _ if BLOCK.contains(&name) => self.breaks(1),
            _ => {}
        }
    }

    /// A link's URL goes to the footnotes unless its text already says it.
    fn end_link(&mut self) {
        let Some((href, start)) = self.link.take() else { return };
        let href = href.trim();
        if href.is_empty() || href.starts_with('#') || href.to_ascii_lowercase().starts_with("javascript:") {
            return;
        }
        let shown = self.out.get(start..).unwrap_or_default().trim();
        let bare = href.strip_prefix("mailto:").unwrap_or(href);
        if shown == href || shown == bare || shown.is_empty() {
            if shown.is_empty() {
                self.visible('<');
                self.out.push_str(bare);
                self.out.push('>');
            }
            return;
        }
        self.footnotes.push(href.to_string());
        let n = self.footnotes.len();
        self.out.push_str(&format!("[{n}]"));
    }

    fn finish(mut self) -> String {
        if !self.footnotes.is_empty() {
            self.breaks(2);
            for (i, url) in std::mem::take(&mut self.footnotes).iter().enumerate() {
                self.settle();
                self.out.push_str(&format!("[{}]: {url}", i + 1));
                self.breaks(1);
            }
        }
        if !is_tidy(&self.out) {
            return tidy(&self.out);
        }
        // Markup-heavy mail leaves most of the room unused; it is held until the event is sent.
        if self.out.capacity() > 2 * self.out.len() {
            self.out.shrink_to_fit();
        }
        self.out
    }
}

/// The longest element name the renderer treats specially (`blockquote`, `figcaption`).
const KNOWN_NAME_MAX: usize = 10;

/// `name` in lowercase, written into `buf`; a name longer than any the renderer knows comes
/// back empty, which matches no element.
fn lowercase_name<'b>(name: &[u8], buf: &'b mut [u8; KNOWN_NAME_MAX]) -> &'b str {
    let Some(lower) = buf.get_mut(..name.len()) else {
        return "";
    };
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    // The caller's names are ASCII letters, digits, `-`, `:` and `_`.
    std::str::from_utf8(lower).unwrap_or_default()
}

/// True when [`tidy`] would change nothing (the common case: then the text is not copied).
fn is_tidy(text: &str) -> bool {
    let ends = |c: Option<char>| c.is_none_or(|c| !c.is_whitespace());
    if !ends(text.chars().next()) || !ends(text.chars().next_back()) {
        return false;
    }
    for at in memchr::memchr_iter(b'\n', text.as_bytes()) {
        let before = &text[..at];
        match before.chars().next_back() {
            // A blank line, but never two in a row.
            Some('\n') if before.ends_with("\n\n") => return false,
            Some('\n') => {}
            Some(c) if c.is_whitespace() => return false,
            _ => {}
        }
    }
    true
}

/// Trailing spaces off every line, at most one blank line in a row, no leading or trailing
/// blank lines.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

/// Skips a raw-text element's content up to and including its end tag.
fn skip_raw<'a>(s: &'a str, name: &str) -> &'a str {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find("</").map(|i| i + from) {
        let candidate = &bytes[i + 2..];
        if candidate.len() >= name.len() && candidate[..name.len()].eq_ignore_ascii_case(name.as_bytes()) {
            return s[i..].find('>').map_or("", |end| &s[i + end + 1..]);
        }
        from = i + 2;
    }
    ""
}

/// The value of attribute `name` in a tag's attribute text, entities decoded.
fn attribute(attrs: &str, name: &str) -> Option<String> {
    let bytes = attrs.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let before = i;
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !matches!(bytes[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let key = &attrs[key_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = "";
        if bytes.get(i) == Some(&b'=') {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            match bytes.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    let end = attrs[i + 1..].find(q as char).map_or(attrs.len(), |e| i + 1 + e);
                    value = &attrs[i + 1..end];
                    i = end + 1;
                }
                _ => {
                    let start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    value = &attrs[start..i];
                }
            }
        }
        if key.eq_ignore_ascii_case(name) {
            return Some(decode_entities(value));
        }
        // Nothing taken (a stray `>` or `=`, both ASCII): step over it.
        if i == before {
            i += 1;
        }
    }
    None
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let (c, used) = entity(&rest[amp..]);
        match c {
            Some(c) => out.push(c),
            None => out.push('&'),
        }
        rest = &rest[amp + used..];
    }
    out.push_str(rest);
    out
}

/// Latin-1 names in code point order from U+00A0.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf", "laquo", "not", "shy",
    "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro", "para", "middot", "cedil", "sup1", "ordm",
    "raquo", "frac14", "frac12", "frac34", "iquest", "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig",
    "Ccedil", "Egrave", "Eacute", "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve",
    "Oacute", "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute", "THORN",
    "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil", "egrave", "eacute", "ecirc",
    "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde", "ograve", "oacute", "ocirc", "otilde", "ouml",
    "divide", "oslash", "ugrave", "uacute", "ucirc", "uuml", "yacute", "thorn", "yuml",
];

/// Other names mail commonly carries.
const NAMED: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("OElig", 'Œ'),
    ("oelig", 'œ'),
    ("Scaron", 'Š'),
    ("scaron", 'š'),
    ("Yuml", 'Ÿ'),
    ("fnof", 'ƒ'),
    ("circ", 'ˆ'),
    ("tilde", '˜'),
    ("ensp", ' '),
    ("emsp", ' '),
    ("thinsp", ' '),
    ("zwnj", '\u{200c}'),
    ("zwj", '\u{200d}'),
    ("lrm", '\u{200e}'),
    ("rlm", '\u{200f}'),
    ("ndash", '–'),
    ("mdash", '—'),
    ("lsquo", '‘'),
    ("rsquo", '’'),
    ("sbquo", '‚'),
    ("ldquo", '“'),
    ("rdquo", '”'),
    ("bdquo", '„'),
    ("dagger", '†'),
    ("Dagger", '‡'),
    ("bull", '•'),
    ("hellip", '…'),
    ("permil", '‰'),
    ("prime", '′'),
    ("Prime", '″'),
    ("lsaquo", '‹'),
    ("rsaquo", '›'),
    ("euro", '€'),
    ("trade", '™'),
    ("larr", '←'),
    ("rarr", '→'),
    ("uarr", '↑'),
    ("darr", '↓'),
    ("check", '✓'),
];

/// Decodes the character reference at the start of `s` (which begins with `&`): the character,
/// or `None` when it is not one, and the bytes it took (1 when not a reference).
fn entity(s: &str) -> (Option<char>, usize) {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 3),
            None => (num, 10, 2),
        };
        let len = digits.bytes().take_while(|b| (*b as char).is_digit(radix)).count();
        if len == 0 {
            return (None, 1);
        }
        let code = u32::from_str_radix(&digits[..len.min(8)], radix).unwrap_or(u32::MAX);
        let c = match code {
            0 => '\u{fffd}',
            // Windows-1252 in place of C1 controls, as browsers read them.
            0x80..=0x9f => windows_1252(code),
            _ => char::from_u32(code).unwrap_or('\u{fffd}'),
        };
        let semi = usize::from(digits[len..].starts_with(';'));
        return (Some(c), skip + len + semi);
    }
    let len = body.bytes().take_while(u8::is_ascii_alphanumeric).count();
    let name = &body[..len];
    let semi = body[len..].starts_with(';');
    // Without `;` only the oldest names count, as in browsers' text content.
    if !semi && !matches!(name, "amp" | "lt" | "gt" | "quot" | "nbsp" | "copy" | "reg") {
        return (None, 1);
    }
    let c = LATIN1
        .iter()
        .position(|n| *n == name)
        .and_then(|i| char::from_u32(0xa0 + i as u32))
        .or_else(|| NAMED.iter().find(|(n, _)| *n == name).map(|(_, c)| *c));
    match c {
        Some(c) => (Some(c), 1 + len + usize::from(semi)),
        None => (None, 1),
    }
}

fn windows_1252(code: u32) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    HIGH[(code - 0x80) as usize]
}

#[cfg(test)]
mod tests {
    use super::{BLOCK, KNOWN_NAME_MAX, PARAGRAPH, RAW_SKIPPED, Renderer, html_to_text, is_tidy, tidy};

    #[test]
    fn outlook_style_html_reads_as_an_agent_would_expect() {
        let html = "<html><head><style>p{margin:0}</style></head><body>\r\n<div>Hello,</div>\r\n<div><br></div>\r\n\
                    <div>my&nbsp;order #1042 is late &amp; I'm worried.</div>\r\n<div><br></div>\r\n\
                    <ul><li>tracking: none</li>\r\n<li>paid: yes</li></ul>\r\n\
                    <div>See <a href=\"https://shop.example/orders/1042\">my order</a>.</div>\r\n<div>Ann</div></body></html>";
        assert_eq!(
            html_to_text(html),
            "Hello,\n\nmy order #1042 is late & I'm worried.\n\n* tracking: none\n* paid: yes\n\
             See my order[1].\nAnn\n\n[1]: https://shop.example/orders/1042"
        );
    }

    #[test]
    fn paragraphs_headings_and_whitespace() {
        assert_eq!(
            html_to_text("<h1>Order\n  late</h1><p>First   line<br>second</p><p>Third</p>"),
            "Order late\n\nFirst line\nsecond\n\nThird"
        );
        assert_eq!(html_to_text("  a \t b\r\n c  "), "a b c");
        assert_eq!(html_to_text("<b>bold</b><i>it</i> <span>x</span>"), "boldit x");
    }

    #[test]
    fn scripts_styles_comments_and_doctype_are_not_text() {
        let html = "<!DOCTYPE html><!-- <p>hidden</p> --><title>T</title><script>if (a < b) { x = '</p>'; }</script>\
                    <STYLE type=\"text/css\">.x{}</STYLE><p>shown</p><?xml version=\"1.0\"?><o:p></o:p>";
        assert_eq!(html_to_text(html), "shown");
        assert_eq!(html_to_text("before<script>never closed"), "before");
        assert_eq!(html_to_text("before<!-- never closed"), "before");
    }

    #[test]
    fn character_references() {
        assert_eq!(
            html_to_text("caf&eacute; &#233;&#xE9; &lt;tag&gt; &quot;q&quot; &euro;5 &#150; &bogus; & a&b &amp"),
            "café éé <tag> \"q\" €5 – &bogus; & a&b &"
        );
        assert_eq!(html_to_text("&#0;&#x110000;"), "\u{fffd}\u{fffd}");
        assert_eq!(html_to_text("a&nbsp;&nbsp;b"), "a  b");
    }

    #[test]
    fn lists_tables_and_pre() {
        assert_eq!(
            html_to_text("<ol start=3><li>three<li>four<ul><li>nested</li></ul></ol>after"),
            "3. three\n4. four\n  * nested\nafter"
        );
        assert_eq!(
            html_to_text("<table><tr><th>Order</th><th>State</th></tr><tr><td>1042</td><td>late</td></tr></table>"),
            "Order State\n1042 late"
        );
        assert_eq!(html_to_text("<p>x</p><pre>  a\r\n    b</pre>y"), "x\n\n  a\n    b\n\ny");
    }

    #[test]
    fn links() {
        assert_eq!(
            html_to_text(
                "<a href='https://x.example/a?b=1&amp;c=2'>here</a> <a href=\"https://y.example\">https://y.example</a> <a href=\"mailto:ann@x.net\">ann@x.net</a> <a href=#top>top</a> <a href=\"https://z.example\"></a>"
            ),
            "here[1] https://y.example ann@x.net top <https://z.example>\n\n[1]: https://x.example/a?b=1&c=2"
        );
    }

    #[test]
    fn stray_angle_brackets_are_text() {
        assert_eq!(html_to_text("1 < 2 and 3 > 2, <3 <>"), "1 < 2 and 3 > 2, <3 <>");
        assert_eq!(html_to_text("a <b title=\"x > y\">c</b>"), "a c");
        assert_eq!(html_to_text("a <div unterminated"), "a");
    }

    #[test]
    fn element_names_are_matched_in_any_case_and_long_ones_are_no_element() {
        for name in BLOCK.iter().chain(PARAGRAPH).chain(RAW_SKIPPED) {
            assert!(name.len() <= KNOWN_NAME_MAX, "{name} does not fit the name buffer");
        }
        assert_eq!(
            html_to_text("<BlockQuote>quoted</BLOCKQUOTE>after<FigCaption>cap</figcaption>"),
            "quoted\n\nafter\ncap"
        );
        assert_eq!(html_to_text("<NoScript>hidden</NOSCRIPT>shown"), "shown");
        assert_eq!(
            html_to_text("a<blockquotes>b</blockquotes>c<my-custom-element>d</my-custom-element>"),
            "abcd"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_input_gives_tidy_text(html in "(\\PC|<[a-zA-Z/!][a-z0-9 =\"'/é-]{0,12}>?|&[#a-zA-Z0-9]{0,6};?|[ \r\n\t])*") {
            let text = html_to_text(&html);
            proptest::prop_assert!(!text.contains('\r'));
            proptest::prop_assert!(!text.contains("\n\n\n"));
            proptest::prop_assert_eq!(text.trim(), text.as_str());
            proptest::prop_assert!(text.lines().all(|l| l == l.trim_end()));
        }

        #[test]
        fn the_fast_scan_renders_what_a_byte_at_a_time_renders(html in "([a-z]{1,9}|[ ]{1,3}|[\t\r\n\x0c]|&(amp|#32|nbsp|shy|#x9|lt);?|&|<|</?(p|pre|br|b|li|ol|a href=x)>|\\PC)*") {
            let mut plain = Renderer::with_capacity(0);
            let mut rest = html.as_str();
            while let Some(lt) = rest.find('<') {
                plain.text_plain(&rest[..lt]);
                rest = plain.markup(&rest[lt..]);
            }
            plain.text_plain(rest);
            let plain = plain.finish();
            proptest::prop_assert_eq!(html_to_text(&html), plain);
        }

        #[test]
        fn text_found_tidy_is_what_tidying_gives(text in "[a \n\r\t\u{a0}é]{0,40}") {
            if is_tidy(&text) {
                proptest::prop_assert_eq!(tidy(&text), text);
            }
        }
    }
}
