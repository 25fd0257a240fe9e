// SPDX-License-Identifier: Apache-2.0
//! Fuzzes vmm::migration::fuzz_stream (see that function for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::migration::fuzz_stream(data));
