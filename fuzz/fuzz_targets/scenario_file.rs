//! Any text is read as a scenario file or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = brownout::scenarios::file::parse("fuzz.toml", text, false);
        let _ = brownout::scenarios::file::parse("fuzz.toml", text, true);
    }
});
