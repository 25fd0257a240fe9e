// SPDX-License-Identifier: Apache-2.0
//! Fuzzes vmm::api::fuzz_request (see that function for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::api::fuzz_request(data));
