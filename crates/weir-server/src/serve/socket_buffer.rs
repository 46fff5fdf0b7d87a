//! Kernel socket buffers of the configured size, bookkeeping included.

/// What to ask of SO_SNDBUF or SO_RCVBUF for a socket to hold at most `configured` bytes:
/// Linux doubles the value it is given (the other half pays for its bookkeeping), so
/// asking for half makes the socket's whole allocation the configured size.
pub fn request_for(configured: u64) -> usize {
    usize::try_from(configured / 2).unwrap_or(usize::MAX)
}
