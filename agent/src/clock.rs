//! Time: the wall clock, the kernel's clock offset, parsing of `--until`, and the default
//! lifetime of a revocation.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Margin kept after a JWT's `exp` before its revocation lapses: gateways accept tokens a
/// little past `exp` (clock-skew leeway; 60 s in jsonwebtoken and Envoy), so 5 minutes covers them.
pub const JWT_EXP_MARGIN: u64 = 300;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// CLOCK_REALTIME minus CLOCK_BOOTTIME, in ns: the kernel adds it to `bpf_ktime_get_boot_ns`.
pub fn clock_offset_ns() -> u64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for clock_gettime to fill; both clocks exist on
        // every Linux this runs on (a failure leaves it zero).
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    read(libc::CLOCK_REALTIME).saturating_sub(read(libc::CLOCK_BOOTTIME))
}

/// Parses `TIME`: unix seconds, an RFC 3339 time (`2026-12-01T00:00:00Z`), or a duration from
/// now (`90s`, `15m`, `2h`, `7d`, `1h 30m`). Returns unix seconds.
pub fn parse_until(s: &str, now: u64) -> anyhow::Result<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().context("unix time out of range");
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow::anyhow!("time before 1970"))?
            .as_secs();
        return Ok(secs);
    }
    match humantime::parse_duration(s) {
        Ok(d) if d > Duration::ZERO => Ok(now.saturating_add(d.as_secs().max(1))),
        Ok(_) => bail!("--until duration must be positive"),
        Err(_) => {
            bail!("--until '{s}' is not unix seconds, an RFC 3339 time, or a duration like 2h")
        }
    }
}

/// The `exp` claim of a JWT-shaped token, read without verification (only to bound how long
/// the revocation needs to be kept). `None` for anything that is not a JWT with a numeric `exp`.
pub fn jwt_exp(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    claims.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_until("1767225600", 0).unwrap(), 1_767_225_600);
        assert_eq!(
            parse_until("2026-01-01T00:00:00Z", 0).unwrap(),
            1_767_225_600
        );
        assert_eq!(parse_until("2h", 1000).unwrap(), 1000 + 7200);
        assert_eq!(parse_until("1h 30m", 0).unwrap(), 5400);
        assert!(
            parse_until("soon", 0)
                .unwrap_err()
                .to_string()
                .contains("not unix seconds")
        );
        assert!(parse_until("0s", 0).is_err());
    }

    #[test]
    fn reads_exp_from_a_jwt_only() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"sub":"a","exp":1767225600}"#)
        );
        assert_eq!(jwt_exp(&jwt), Some(1_767_225_600));
        assert_eq!(jwt_exp("opaque-token"), None);
        assert_eq!(
            jwt_exp(&format!("{}.{}.s", b64("{}"), b64(r#"{"exp":"x"}"#))),
            None
        );
        assert_eq!(jwt_exp("a.b.c.d"), None);
    }
}
