//! Typed metric label values: every label a metric carries is one of these enums (or a
//! bounded key id or version), so a label can only take the values listed here.

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::types::RuleKind;

macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in label order.
            pub const ALL: &[$name] = &[$($name::$variant),*];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::ALL
                    .iter()
                    .find(|v| v.as_str() == text)
                    .copied()
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown {}: {text}", stringify!($name))))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// The outcome of a token check.
    Outcome {
        /// Valid.
        Ok => "ok",
        /// Past `exp`.
        Expired => "expired",
        /// Before `nbf`, or issued in the future.
        NotYetValid => "not_yet_valid",
        /// The signature does not verify (or the algorithm is not the key's).
        BadSignature => "bad_signature",
        /// No trusted key for its `kid`.
        UnknownKey => "unknown_key",
        /// `iss` is not the key's issuer.
        WrongIssuer => "wrong_issuer",
        /// `aud` names none of the accepted audiences.
        WrongAudience => "wrong_audience",
        /// Revoked (by token, signing key or rule).
        Revoked => "revoked",
        /// Anything else wrong with it.
        Malformed => "malformed",
    }
}

label_values! {
    /// What a revocation names.
    RevocationKind {
        /// One token.
        Token => "token",
        /// An API key.
        ApiKey => "api_key",
        /// A `jti` rule.
        Jti => "jti",
        /// A subject rule.
        Sub => "sub",
        /// A client rule.
        Client => "client",
        /// A signing-key rule (or a learned header segment).
        Kid => "kid",
        /// A refresh-token family's access tokens.
        Family => "family",
    }
}

impl From<RuleKind> for RevocationKind {
    fn from(k: RuleKind) -> Self {
        match k {
            RuleKind::Jti => RevocationKind::Jti,
            RuleKind::Sub => RevocationKind::Sub,
            RuleKind::Client => RevocationKind::Client,
            RuleKind::Kid => RevocationKind::Kid,
        }
    }
}

label_values! {
    /// Who or what revoked.
    RevocationSource {
        /// An operator (CLI or admin API).
        Operator => "operator",
        /// A client through RFC 7009.
        Rfc7009 => "rfc7009",
        /// Learned: a rule or an older revocation covered a presented token.
        Learned => "learned",
        /// Refresh-token reuse ended a family.
        Reuse => "reuse",
        /// A rule ended a session at its refresh.
        SessionEnd => "session_end",
    }
}

label_values! {
    /// An anomaly rule.
    AlertRule {
        /// A revoked token replayed from several addresses.
        TokenTheft => "token_theft",
        /// Kernel hits for one token above a rate.
        RevokedTokenFlood => "revoked_token_flood",
        /// Bad-signature and unknown-key rejections above a rate or share.
        KeyRollout => "key_rollout",
        /// A retired refresh token presented.
        RefreshReuse => "refresh_reuse",
        /// A revocation did not fit in a kernel map.
        KernelMapFull => "kernel_map_full",
    }
}

label_values! {
    /// What became of an alert sent to the webhook.
    DeliveryResult {
        /// Delivered.
        Delivered => "delivered",
        /// Failed after every retry.
        Failed => "failed",
        /// Dropped: the queue was full.
        Dropped => "dropped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_snake_case_and_distinct() {
        let all: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(all.len(), 9);
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(
            all.iter()
                .all(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        assert_eq!(AlertRule::KernelMapFull.to_string(), "kernel_map_full");
        assert_eq!(RevocationKind::from(RuleKind::Sub), RevocationKind::Sub);
    }
}
