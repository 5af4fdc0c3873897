//! SSE framing: a stream cut anywhere has its events end where the whole stream's do, and
//! any event parses and is written again with its fields.
#![no_main]

use brownout::proxy::sse::{SseEvent, ends};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, text)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) % (text.len() + 1);
    let whole = ends(&[text]);
    assert_eq!(ends(&[&text[..cut], &text[cut..]]), whole);
    let mut from = 0;
    for end in whole {
        let event = SseEvent::parse(&text[from..end]);
        // Written again with its own data, or with any bytes a fault made of it (corrupt
        // flips bits), it is one event.
        for data in [event.data.as_deref().unwrap_or("").as_bytes(), text] {
            let again = event.with_data(data);
            assert_eq!(ends(&[&again]), [again.len()], "{again:?}");
        }
        from = end;
    }
});
