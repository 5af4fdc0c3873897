//! Line framing: a byte stream cut into newline-terminated JSON-RPC messages (stdio), with
//! a bound on what is held of a line not yet complete.

use bytes::{Bytes, BytesMut};

/// What a stream of bytes was cut into, in order. Every byte read is in exactly one
/// `Line` or `Raw`, so what goes on is what came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole line, its newline included: one message.
    Line(Bytes),
    /// Part of a line too long to hold, passed on as it came, unframed.
    Raw(Bytes),
    /// A line went over the bound, this many bytes into it; its `Raw` pieces follow.
    Oversized(usize),
}

/// Cuts lines off a byte stream as it arrives, holding at most `max` bytes of an
/// unfinished line: a peer that never sends a newline costs a bounded amount of memory.
#[derive(Debug)]
pub struct Lines {
    max: usize,
    partial: BytesMut,
    /// Inside a line longer than `max`: bytes pass as they come until its newline.
    oversized: bool,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            max,
            partial: BytesMut::new(),
            oversized: false,
        }
    }

    /// Bytes held of the line not yet complete.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Cut what was read into pieces, appended to `out`.
    pub fn feed(&mut self, mut data: Bytes, out: &mut Vec<Piece>) {
        if self.oversized {
            // The rest of an overlong line, up to and including its newline, passes as is.
            let nl = newline(&data);
            let rest = data.split_to(nl.map_or(data.len(), |i| i + 1));
            self.oversized = nl.is_none();
            if !rest.is_empty() {
                out.push(Piece::Raw(rest));
            }
        }
        while !data.is_empty() {
            let Some(i) = newline(&data) else {
                if self.partial.len() + data.len() > self.max {
                    // Too long to hold: what there is goes on now, and the rest as it comes.
                    self.pass_oversized(data, out);
                } else {
                    self.partial.extend_from_slice(&data);
                }
                break;
            };
            let line = data.split_to(i + 1);
            if self.partial.len() + line.len() > self.max {
                // It ends here: the next line is framed again.
                self.pass_oversized(line, out);
                self.oversized = false;
                continue;
            }
            let line = if self.partial.is_empty() {
                line
            } else {
                self.partial.extend_from_slice(&line);
                self.partial.split().freeze()
            };
            out.push(Piece::Line(line));
        }
        if self.partial.is_empty() {
            // Hold no buffer between messages.
            self.partial = BytesMut::new();
        }
    }

    /// At the end of the stream: a last line without its newline, which is still a message.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.oversized = false;
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial).freeze())
    }

    fn pass_oversized(&mut self, more: Bytes, out: &mut Vec<Piece>) {
        let held = std::mem::take(&mut self.partial).freeze();
        out.push(Piece::Oversized(held.len() + more.len()));
        if !held.is_empty() {
            out.push(Piece::Raw(held));
        }
        out.push(Piece::Raw(more));
        self.oversized = true;
    }
}

fn newline(data: &[u8]) -> Option<usize> {
    data.iter().position(|b| *b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cut(max: usize, input: &[u8], cuts: &[usize]) -> (Vec<Piece>, usize) {
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        let mut most_held = 0;
        let mut from = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        points.push(input.len());
        for to in points {
            lines.feed(Bytes::copy_from_slice(&input[from..to]), &mut out);
            most_held = most_held.max(lines.held());
            from = to;
        }
        out.extend(lines.finish().map(Piece::Line));
        (out, most_held)
    }

    fn lines_of(pieces: &[Piece]) -> Vec<&[u8]> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Line(l) => Some(&l[..]),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_line_over_the_bound_passes_unframed_and_the_next_is_framed() {
        let (pieces, most_held) = cut(8, b"{\"a\":1}\n0123456789abcdef\n{}\n", &[3, 12]);
        assert_eq!(lines_of(&pieces), [&b"{\"a\":1}\n"[..], b"{}\n"]);
        assert_eq!(
            pieces
                .iter()
                .filter(|p| matches!(p, Piece::Oversized(_)))
                .count(),
            1
        );
        assert!(most_held <= 8, "held {most_held}");
    }

    proptest! {
        /// However the stream is cut: every byte goes on once and in order, no more than
        /// the bound is ever held, lines within the bound come out whole and the same, and
        /// each line over it is noted once.
        #[test]
        fn lines_are_framed_the_same_however_the_stream_is_cut(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'x'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            max in 1usize..40,
        ) {
            let (pieces, most_held) = cut(max, &input, &cuts);
            let mut again = Vec::new();
            for p in &pieces {
                match p {
                    Piece::Line(b) | Piece::Raw(b) => again.extend_from_slice(b),
                    Piece::Oversized(_) => {}
                }
            }
            prop_assert_eq!(&again, &input);
            prop_assert!(most_held <= max, "held {} over {}", most_held, max);
            let whole: Vec<&[u8]> = input
                .split_inclusive(|b| *b == b'\n')
                .filter(|l| l.len() <= max)
                .collect();
            prop_assert_eq!(lines_of(&pieces), whole);
            let over = input
                .split_inclusive(|b| *b == b'\n')
                .filter(|l| l.len() > max)
                .count();
            let noted = pieces.iter().filter(|p| matches!(p, Piece::Oversized(_))).count();
            prop_assert_eq!(noted, over);
        }
    }
}
