//! The webhook body parser: any bytes, no panic, no unbounded allocation.
#![no_main]

use common::event::{FluentEvent, RequiredFields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = FluentEvent::parse(body, &RequiredFields::default());
});
