// SPDX-License-Identifier: Apache-2.0
//! Fuzzes the guest SDK allocator: operation sequences from two peers
//! (frees into either peer's thread cache), a peer dying after any store of
//! a cached take or give or any journal record of a heap transaction, and
//! the heap checker as the oracle (see `shoal::alloc::fuzz::run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = shoal::alloc::fuzz::run(data) {
        panic!("heap inconsistent: {e}");
    }
});
