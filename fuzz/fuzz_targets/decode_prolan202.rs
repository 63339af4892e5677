//! Fuzzes the ProLAN-202 host-side decoder (and the keypad side, `decode_outbound`).
//! The input format and every invariant checked are in
//! `tests/fuzz_checks/mod.rs`, shared with the corpus replay and the
//! property tests of `tests/it/fuzz_corpus.rs`.

#![no_main]

#[path = "../../tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_prolan202(data));
