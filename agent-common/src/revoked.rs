//! Values of the revoked-token map.

/// One revoked token, keyed in the map by its keyed hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Unix seconds after which the entry is ignored (and purged by the agent); 0 = never.
    pub expires_at: u64,
    /// A [`Reason`] code.
    pub reason: u32,
    /// Bit flags; [`FLAG_API_KEY`] marks API keys.
    pub flags: u32,
}

/// The entry is an API key rather than a bearer token.
pub const FLAG_API_KEY: u32 = 1;

/// Coarse reason codes the kernel reports in events (free text stays in the agent's store).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not given.
    Unspecified = 0,
    /// Revoked by an operator.
    Operator = 1,
    /// Key or token compromise.
    Compromise = 2,
    /// Session logout.
    Logout = 3,
}

impl RevokedEntry {
    /// Whether the entry still applies at `now` (unix seconds).
    #[inline(always)]
    pub const fn is_live(&self, now: u64) -> bool {
        self.expires_at == 0 || now < self.expires_at
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: RevokedEntry is repr(C), Copy, made only of integers with no padding holes, so any
    // bytes are a valid value and aya may copy it to and from the kernel as plain data.
    unsafe impl aya::Pod for super::RevokedEntry {}
}
