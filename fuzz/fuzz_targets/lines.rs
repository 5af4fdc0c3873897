//! stdio line framing: however a stream is cut into reads, every byte goes on once and in
//! order, and no more than the bound is held of an unfinished line.
#![no_main]

use brownout::proxy::lines::{Lines, Piece};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte sets the bound, the next two where reads are cut.
    let [max, a, b, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*max) + 1;
    let mut cuts = [
        usize::from(*a) % (rest.len() + 1),
        usize::from(*b) % (rest.len() + 1),
    ];
    cuts.sort_unstable();
    let mut lines = Lines::new(max);
    let mut out = Vec::new();
    let mut from = 0;
    for to in cuts.into_iter().chain([rest.len()]) {
        lines.feed(Bytes::copy_from_slice(&rest[from..to]), &mut out);
        assert!(lines.held() <= max, "held {} over {max}", lines.held());
        from = to;
    }
    out.extend(lines.finish().map(Piece::Line));
    let mut again = Vec::new();
    for piece in &out {
        match piece {
            Piece::Line(l) => {
                assert!(l.len() <= max);
                again.extend_from_slice(l);
            }
            Piece::Raw(r) => again.extend_from_slice(r),
            Piece::Oversized(_) => {}
        }
    }
    assert_eq!(again, rest);
});
