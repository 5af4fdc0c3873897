//! Server-sent events as MCP's Streamable HTTP carries them: where each event ends in a
//! stream that arrives in pieces, and an event's fields around the message in its data.

use bytes::Bytes;

/// Where SSE events end, found as their bytes arrive: a line ends in \n, \r\n or \r, and
/// an event at an empty line. Each byte is looked at once, so an event that never ends
/// costs nothing to rescan.
#[derive(Clone, Copy, Debug, Default)]
pub enum Scan {
    #[default]
    LineStart,
    InLine,
    /// Just after a \r that ended a line: a \n next belongs to it.
    AfterCr,
    /// Just after an empty line ended by \r: the event ends, with a \n next if there is one.
    EmptyCr,
}

impl Scan {
    /// Scan `data`, the bytes after those scanned before. `Some(n)`: the event ends after
    /// `data[..n]`, and the scan starts over for the next one.
    pub fn feed(&mut self, data: &[u8]) -> Option<usize> {
        for (i, b) in data.iter().enumerate() {
            *self = match (*self, *b) {
                (Scan::EmptyCr, b'\n') | (Scan::LineStart, b'\n') => {
                    *self = Scan::LineStart;
                    return Some(i + 1);
                }
                (Scan::EmptyCr, _) => {
                    *self = Scan::LineStart;
                    return Some(i);
                }
                (Scan::LineStart | Scan::AfterCr, b'\r') => Scan::EmptyCr,
                (_, b'\n') => Scan::LineStart,
                (_, b'\r') => Scan::AfterCr,
                _ => Scan::InLine,
            };
        }
        None
    }
}

/// Where events end in a stream that arrives in `pieces`, as offsets into the whole.
pub fn ends(pieces: &[&[u8]]) -> Vec<usize> {
    let (mut scan, mut ends, mut offset) = (Scan::default(), Vec::new(), 0);
    for piece in pieces {
        let mut at = 0;
        while let Some(n) = scan.feed(&piece[at..]) {
            at += n;
            ends.push(offset + at);
        }
        offset += piece.len();
    }
    ends
}

/// An SSE event: its data (the message), and every other line kept as it was.
#[derive(Debug)]
pub struct SseEvent {
    pub data: Option<String>,
    /// The lines that are not `data`, without their line endings.
    pub other: Vec<String>,
}

impl SseEvent {
    pub fn parse(raw: &[u8]) -> SseEvent {
        let text = String::from_utf8_lossy(raw);
        let mut data: Option<String> = None;
        let mut other = Vec::new();
        for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("data")
                && (rest.is_empty() || rest.starts_with(':'))
            {
                let value = rest.strip_prefix(':').unwrap_or("");
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                }
                continue;
            }
            other.push(line.to_owned());
        }
        SseEvent { data, other }
    }

    /// The event again, with `data` as its data.
    pub fn with_data(&self, data: &[u8]) -> Bytes {
        let mut out = String::new();
        for line in &self.other {
            out.push_str(line);
            out.push('\n');
        }
        let data = String::from_utf8_lossy(data);
        // A \r inside a line would end it early (SSE ends lines at \r too), and two would
        // end the event: each piece between them gets a data line of its own.
        for line in data.trim_end_matches(['\n', '\r']).split('\n') {
            for piece in line.trim_end_matches('\r').split('\r') {
                out.push_str("data: ");
                out.push_str(piece);
                out.push('\n');
            }
        }
        out.push('\n');
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_with_any_line_ending() {
        let event_len = |buf: &[u8]| Scan::default().feed(buf);
        assert_eq!(event_len(b"data: a\n\nrest"), Some(9));
        assert_eq!(event_len(b"id: 1\r\ndata: a\r\n\r\n"), Some(18));
        assert_eq!(event_len(b"data: a\n"), None);
        assert_eq!(event_len(b"data: a\r"), None);
        assert_eq!(event_len(b": keepalive\n\n"), Some(13));
        assert_eq!(event_len(b"data: a\r\rx"), Some(9));
        assert_eq!(event_len(b"data: a\n\r\n"), Some(10));
    }

    proptest::proptest! {
        /// Any stream, cut into pieces anywhere, has its events end where the whole
        /// stream's do.
        #[test]
        fn events_end_in_the_same_places_however_the_stream_is_cut(
            text in proptest::collection::vec(proptest::sample::select(&b"a:\r\n"[..]), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..4),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in cuts {
                pieces.push(&text[from..c]);
                from = c;
            }
            pieces.push(&text[from..]);
            proptest::prop_assert_eq!(ends(&pieces), ends(&[&text[..]]));
        }
    }

    #[test]
    fn an_event_split_anywhere_ends_where_it_would_whole() {
        let text: &[u8] = b"id: 1\r\ndata: a\r\n\r\ndata: b\r\rdata: c\n\n";
        let whole = ends(&[text]);
        assert_eq!(whole, [18, 27, 36]);
        for cut in 1..text.len() {
            assert_eq!(ends(&[&text[..cut], &text[cut..]]), whole, "split at {cut}");
        }
    }

    #[test]
    fn events_keep_their_fields_around_new_data() {
        let e = SseEvent::parse(b"event: message\nid: 42\nretry: 100\ndata: {\"a\":\ndata: 1}\n\n");
        assert_eq!(e.data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(e.other, ["event: message", "id: 42", "retry: 100"]);
        assert_eq!(
            &e.with_data(b"{\"b\":2}\n")[..],
            b"event: message\nid: 42\nretry: 100\ndata: {\"b\":2}\n\n"
        );
        let e = SseEvent::parse(b": ping\n\n");
        assert!(e.data.is_none());
    }

    #[test]
    fn carriage_returns_in_new_data_do_not_end_the_event() {
        // What `corrupt` may make of a message: bytes SSE reads as line ends.
        let e = SseEvent::parse(b"id: 7\ndata: {}\n\n");
        let again = e.with_data(b"{\"a\":\r\r1}\r\n");
        assert_eq!(ends(&[&again]), [again.len()]);
        assert_eq!(&again[..], b"id: 7\ndata: {\"a\":\ndata: \ndata: 1}\n\n");
        assert_eq!(
            SseEvent::parse(&again).data.as_deref(),
            Some("{\"a\":\n\n1}")
        );
    }
}
