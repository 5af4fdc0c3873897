//! Any bytes read as some JSON-RPC message; requests and answers split from one input are
//! matched by id without a panic, and an answer is only ever given its own request's method.
#![no_main]

use brownout::faults::{Correlator, Direction, Kind, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut correlator = Correlator::default();
    let mut requests = std::collections::HashMap::new();
    // Each line a message; the first byte of each says which way it goes.
    for line in data.split(|b| *b == b'\n') {
        let Some((&way, line)) = line.split_first() else {
            continue;
        };
        let dir = if way & 1 == 0 {
            Direction::Upstream
        } else {
            Direction::Downstream
        };
        let mut msg = Message::parse(line);
        let method = msg.method.clone();
        correlator.observe(dir, &mut msg);
        match msg.kind {
            Kind::Request => {
                let id = msg.id.as_ref().expect("a request has an id").to_string();
                requests.insert((dir, id), (method, msg.tool.clone()));
            }
            Kind::Response | Kind::Error => {
                if let Some(id) = &msg.id
                    && let Some(method) = &msg.method
                {
                    let asked = requests.get(&(dir.opposite(), id.to_string()));
                    assert_eq!(asked.and_then(|(m, _)| m.as_ref()), Some(method));
                }
            }
            Kind::Notification | Kind::Other => {}
        }
    }
});
