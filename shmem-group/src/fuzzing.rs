// SPDX-License-Identifier: Apache-2.0
//! Entry points for fuzz targets over everything that parses peer or server
//! input. None may panic. A cargo-fuzz target is one line:
//!
//! ```ignore
//! libfuzzer_sys::fuzz_target!(|data: &[u8]| shmem_group::fuzzing::fuzz_v0_decoder(data));
//! ```

use crate::ext;
use crate::protocol::{self, V0Decoder};
use crate::server::conn_fuzz;

/// Client side of v0: the bytes are 9-byte records (8 message bytes, then
/// one byte whose low bit says whether an fd came with it).
pub fn fuzz_v0_decoder(data: &[u8]) {
    let max_vectors = u32::from(data.first().copied().unwrap_or(1) % 8) + 1;
    let mut decoder = V0Decoder::new(max_vectors);
    for record in data.get(1..).unwrap_or_default().chunks(9) {
        let Some((bytes, flag)) = record.split_at_checked(8) else {
            return;
        };
        let fds = usize::from(flag.first().copied().unwrap_or(0) & 3);
        let Ok(msg) = protocol::decode(bytes, fds) else {
            continue;
        };
        let fd = msg.has_fd.then_some(());
        if decoder.push(msg.value, fd).is_err() {
            // A client closes the connection on error; start over.
            decoder = V0Decoder::new(max_vectors);
        }
    }
}

/// Server side of the extension: the bytes are a client's request stream.
pub fn fuzz_ext_request(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((request, used))) = ext::decode_request(rest) {
        let _ = request.fd_count();
        let _ = ext::encode_request(&request);
        rest = rest.get(used..).unwrap_or_default();
    }
}

/// Client side of the extension: the bytes are one reply body.
pub fn fuzz_ext_reply(data: &[u8]) {
    if let Some((len, body)) = data.split_first_chunk::<4>() {
        let _ = ext::reply_len(*len);
        if let Ok(reply) = ext::decode_reply_body(body) {
            let _ = ext::encode_reply(&reply);
        }
    }
}

/// A server connection fed the bytes as client input, in chunks, through a
/// real socket pair (no fds).
pub fn fuzz_server_conn(data: &[u8]) {
    conn_fuzz(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn fuzz_entry_points_survive_random_input() {
        for seed in 0..300 {
            let data = pseudo_random(seed, (seed as usize * 7) % 600);
            fuzz_v0_decoder(&data);
            fuzz_ext_request(&data);
            fuzz_ext_reply(&data);
            fuzz_server_conn(&data);
        }
    }

    #[test]
    fn fuzz_entry_points_survive_valid_prefixes() {
        let hello = ext::encode_request(&ext::Request::Status).unwrap();
        for cut in 0..hello.len() {
            fuzz_ext_request(&hello[..cut]);
            fuzz_server_conn(&hello[..cut]);
        }
        let mut greeting = vec![3u8];
        for (value, fd) in [(0i64, 0u8), (2, 0), (-1, 1), (1, 1), (2, 1), (1, 0)] {
            greeting.extend_from_slice(&value.to_le_bytes());
            greeting.push(fd);
        }
        fuzz_v0_decoder(&greeting);
    }
}
