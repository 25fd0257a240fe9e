// SPDX-License-Identifier: Apache-2.0
//! The `state` file: a fixed little-endian header, then the body.
//!
//! ```text
//!  0  magic "SHOALSNP"        8 bytes
//!  8  format version          u32
//! 12  header length           u32 (64)
//! 16  architecture            u32 (1 = x86_64)
//! 20  page size               u32
//! 24  CPU vendor (CPUID 0)    12 bytes
//! 36  flags                   u32 (0)
//! 40  RAM size                u64 (the length of the `memory` file)
//! 48  body length             u64
//! 56  body CRC-32C            u32
//! 60  header CRC-32C          u32 (over bytes 0..60)
//! 64  body: the JSON of a VmSnapshot
//! ```

use super::crc::crc32c;

/// First bytes of every `state` file.
pub const MAGIC: [u8; 8] = *b"SHOALSNP";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 64;
/// Largest body accepted (a body is a few KiB per vCPU and device).
pub const MAX_BODY_LEN: u64 = 256 << 20;
/// Architecture code for x86_64.
pub const ARCH_X86_64: u32 = 1;

/// Why a `state` file's bytes are not a usable snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a Shoal snapshot (bad magic)")]
    BadMagic,
    #[error("truncated: {found} bytes, expected at least {expected}")]
    Truncated { found: u64, expected: u64 },
    #[error("{0} bytes of trailing data after the body")]
    TrailingData(u64),
    #[error("corrupt header (checksum mismatch)")]
    HeaderChecksum,
    #[error("corrupt body (checksum mismatch)")]
    BodyChecksum,
    #[error("format version {found} is not supported (this build reads version {supported})")]
    Version { found: u32, supported: u32 },
    #[error("header length {0} is not {HEADER_LEN}")]
    HeaderLength(u32),
    #[error("body of {0} bytes is larger than the {MAX_BODY_LEN} byte limit")]
    BodyTooLarge(u64),
    #[error("taken on an incompatible host: {field} is {found}, this host has {host}")]
    Incompatible {
        field: &'static str,
        found: String,
        host: String,
    },
}

/// What a snapshot must agree on with the host that restores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    pub arch: u32,
    pub page_size: u32,
    pub cpu_vendor: [u8; 12],
}

impl HostInfo {
    /// This host.
    pub fn current() -> Self {
        HostInfo {
            arch: ARCH_X86_64,
            page_size: page_size(),
            cpu_vendor: cpu_vendor(),
        }
    }
}

/// The host's page size.
pub fn page_size() -> u32 {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).unwrap_or(4096)
}

fn cpu_vendor() -> [u8; 12] {
    let mut v = [0u8; 12];
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0 exists on every x86_64 CPU and has no side effects.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        v[0..4].copy_from_slice(&r.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&r.edx.to_le_bytes());
        v[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    }
    v
}

/// The decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub host: HostInfo,
    pub ram_size: u64,
    pub body_len: u64,
    pub body_crc: u32,
}

/// Encodes the header for `body`.
pub fn encode_header(host: &HostInfo, ram_size: u64, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&host.arch.to_le_bytes());
    h[20..24].copy_from_slice(&host.page_size.to_le_bytes());
    h[24..36].copy_from_slice(&host.cpu_vendor);
    h[40..48].copy_from_slice(&ram_size.to_le_bytes());
    h[48..56].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&crc32c(body).to_le_bytes());
    let crc = crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn vendor_string(v: &[u8; 12]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches('\0')
        .to_string()
}

/// Checks a header against `host` (magic, checksum, version, compatibility).
pub fn decode_header(bytes: &[u8], host: &HostInfo) -> Result<Header, FormatError> {
    if bytes.len() < 8 || bytes[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            found: bytes.len() as u64,
            expected: HEADER_LEN as u64,
        });
    }
    let h = &bytes[..HEADER_LEN];
    if crc32c(&h[..60]) != u32_at(h, 60) {
        return Err(FormatError::HeaderChecksum);
    }
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let header_len = u32_at(h, 12);
    if header_len as usize != HEADER_LEN {
        return Err(FormatError::HeaderLength(header_len));
    }
    let mut cpu_vendor = [0u8; 12];
    cpu_vendor.copy_from_slice(&h[24..36]);
    let found = HostInfo {
        arch: u32_at(h, 16),
        page_size: u32_at(h, 20),
        cpu_vendor,
    };
    if found.arch != host.arch {
        return Err(FormatError::Incompatible {
            field: "architecture",
            found: found.arch.to_string(),
            host: host.arch.to_string(),
        });
    }
    if found.page_size != host.page_size {
        return Err(FormatError::Incompatible {
            field: "page size",
            found: found.page_size.to_string(),
            host: host.page_size.to_string(),
        });
    }
    if found.cpu_vendor != host.cpu_vendor {
        return Err(FormatError::Incompatible {
            field: "CPU vendor",
            found: vendor_string(&found.cpu_vendor),
            host: vendor_string(&host.cpu_vendor),
        });
    }
    let body_len = u64_at(h, 48);
    if body_len > MAX_BODY_LEN {
        return Err(FormatError::BodyTooLarge(body_len));
    }
    Ok(Header {
        host: found,
        ram_size: u64_at(h, 40),
        body_len,
        body_crc: u32_at(h, 56),
    })
}

/// Checks a whole `state` file and returns its header and body.
pub fn decode_state<'a>(
    bytes: &'a [u8],
    host: &HostInfo,
) -> Result<(Header, &'a [u8]), FormatError> {
    let header = decode_header(bytes, host)?;
    let rest = &bytes[HEADER_LEN..];
    let have = rest.len() as u64;
    if have < header.body_len {
        return Err(FormatError::Truncated {
            found: bytes.len() as u64,
            expected: HEADER_LEN as u64 + header.body_len,
        });
    }
    if have > header.body_len {
        return Err(FormatError::TrailingData(have - header.body_len));
    }
    if crc32c(rest) != header.body_crc {
        return Err(FormatError::BodyChecksum);
    }
    Ok((header, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &[u8]) -> Vec<u8> {
        let mut f = encode_header(&HostInfo::current(), 1 << 20, body).to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn header_and_body_round_trip() {
        let f = file(b"{\"x\":1}");
        let (h, body) = decode_state(&f, &HostInfo::current()).unwrap();
        assert_eq!(body, b"{\"x\":1}");
        assert_eq!(h.ram_size, 1 << 20);
        assert_eq!(h.host, HostInfo::current());
    }

    #[test]
    fn flipped_body_byte_is_a_body_checksum_error() {
        let mut f = file(b"hello body");
        let last = f.len() - 1;
        f[last] ^= 1;
        assert_eq!(
            decode_state(&f, &HostInfo::current()).unwrap_err(),
            FormatError::BodyChecksum
        );
    }

    #[test]
    fn flipped_header_byte_is_a_header_checksum_error() {
        let mut f = file(b"x");
        f[41] ^= 1;
        assert_eq!(
            decode_state(&f, &HostInfo::current()).unwrap_err(),
            FormatError::HeaderChecksum
        );
    }

    #[test]
    fn truncated_body_is_refused() {
        let f = file(b"0123456789");
        let err = decode_state(&f[..f.len() - 3], &HostInfo::current()).unwrap_err();
        assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
    }

    #[test]
    fn truncated_header_is_refused() {
        let f = file(b"0123456789");
        let err = decode_state(&f[..20], &HostInfo::current()).unwrap_err();
        assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
    }

    #[test]
    fn other_version_is_refused_with_both_numbers() {
        let mut f = file(b"x");
        f[8..12].copy_from_slice(&7u32.to_le_bytes());
        let crc = crc32c(&f[..60]);
        f[60..64].copy_from_slice(&crc.to_le_bytes());
        let err = decode_state(&f, &HostInfo::current()).unwrap_err();
        assert_eq!(
            err,
            FormatError::Version {
                found: 7,
                supported: 1
            }
        );
        assert!(err.to_string().contains("version 7"));
    }

    #[test]
    fn other_cpu_vendor_is_incompatible() {
        let f = file(b"x");
        let mut host = HostInfo::current();
        host.cpu_vendor = *b"OtherVendor!";
        let err = decode_state(&f, &host).unwrap_err();
        assert!(matches!(
            err,
            FormatError::Incompatible {
                field: "CPU vendor",
                ..
            }
        ));
    }

    #[test]
    fn bad_magic_is_not_a_snapshot() {
        assert_eq!(
            decode_state(b"garbage garbage", &HostInfo::current()).unwrap_err(),
            FormatError::BadMagic
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut f = file(b"x");
        f.push(0);
        assert_eq!(
            decode_state(&f, &HostInfo::current()).unwrap_err(),
            FormatError::TrailingData(1)
        );
    }
}
