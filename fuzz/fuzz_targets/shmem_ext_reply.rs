// SPDX-License-Identifier: Apache-2.0
//! Fuzzes shmem_group::fuzzing::fuzz_ext_reply (see that function for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmem_group::fuzzing::fuzz_ext_reply(data));
