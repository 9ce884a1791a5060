//! Random identifiers and secrets from the operating system's RNG.
//!
//! Everything that must not be guessed (API token, kernel HMAC keys, worker ids)
//! comes from here, so there is one place that touches the RNG.

/// `bytes` random bytes from the OS, hex-encoded.
pub fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
    hex::encode(buf)
}
