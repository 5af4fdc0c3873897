//! Any API body for a toxic is accepted or refused, never a panic; what is accepted,
//! written out as the API writes it and read again, is the same toxic.
#![no_main]

use brownout::faults::{ToxicInput, ToxicSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<ToxicInput>(data) else {
        return;
    };
    if let Ok(spec) = ToxicSpec::from_input(input) {
        let json = serde_json::to_value(&spec).expect("a toxic writes out");
        let again: ToxicInput = serde_json::from_value(json).expect("and reads back");
        assert_eq!(ToxicSpec::from_input(again), Ok(spec));
    }
});
