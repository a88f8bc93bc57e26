//! The revocation component on in-memory kernel maps: store and maps in step, overflow of a
//! full map, batches recorded before they reach the kernel, rules, learned headers.

use std::sync::Arc;

use agent_common::hash::HashKey;

use super::*;
use crate::kernel::maps::{KernelConfig, MemoryConfig, MemoryMaps};

const NOW: u64 = 1_800_000_000;

fn revocations(dir: &std::path::Path, capacity: Option<usize>) -> (Revocations, Arc<KernelConfig>) {
    let (store, _) = RevocationStore::open(dir, NOW).unwrap();
    let maps = match capacity {
        Some(c) => MemoryMaps::with_capacity(c),
        None => MemoryMaps::default(),
    };
    let config = Arc::new(KernelConfig::new(Box::new(MemoryConfig::default())));
    let key = HashKey::from_bytes([5; 16]);
    (
        Revocations::new(key, store, Box::new(maps), config.clone()),
        config,
    )
}

fn token(hash: u64, expires_at: u64) -> Revocation {
    Revocation {
        hash,
        expires_at,
        reason: "test".into(),
        revoked_at: NOW,
        api_key: false,
        scope: Scope::Token,
    }
}

#[test]
fn a_revocation_is_in_the_store_and_the_map_and_a_later_expiry_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = revocations(dir.path(), None);
    let first = r.revoke(token(1, NOW + 100)).unwrap();
    assert!(first.changed && first.in_kernel && !first.map_became_full);
    let again = r.revoke(token(1, NOW + 50)).unwrap();
    assert!(!again.changed);
    assert_eq!(
        again.entry.expires_at,
        NOW + 100,
        "the later expiry is kept"
    );
    assert!(r.in_kernel(1));
    assert!(r.unrevoke(1, "back", NOW).unwrap());
    assert!(!r.in_kernel(1) && r.get(1).is_none());
}

#[test]
fn a_full_map_overflows_into_userspace_and_the_overflow_moves_in_when_space_frees() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = revocations(dir.path(), Some(2));
    assert!(r.revoke(token(1, NOW + 10)).unwrap().in_kernel);
    assert!(r.revoke(token(2, NOW + 1000)).unwrap().in_kernel);
    let third = r.revoke(token(3, NOW + 1000)).unwrap();
    assert!(!third.in_kernel && third.map_became_full, "{third:?}");
    let fourth = r.revoke(token(4, NOW + 1000)).unwrap();
    assert!(
        !fourth.in_kernel && !fourth.map_became_full,
        "reported once"
    );
    assert_eq!(r.counts().overflow, 2);
    // Still refused, by userspace.
    let h = TokenHashes {
        key: 3,
        whole: 3,
        header: 0,
    };
    assert_eq!(
        r.read().lookup(&h),
        Some(StoreHit::Revoked(RevokedBy::Token))
    );
    // Token 1 expires: its slot goes to one waiting revocation.
    let purged = r.purge(NOW + 11).unwrap();
    assert_eq!(purged.gone, vec![1]);
    assert_eq!((purged.placed, purged.waiting), (1, 1));
    assert_eq!(r.counts().kernel_tokens, 2);
}

#[test]
fn a_restart_over_a_full_map_starts_and_reports_the_overflow() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (r, _) = revocations(dir.path(), None);
        for h in 1..=5 {
            r.revoke(token(h, 0)).unwrap();
        }
    }
    let (r, _) = revocations(dir.path(), Some(3));
    let (inserted, removed, overflow) = r.sync().unwrap();
    assert_eq!((inserted, removed, overflow), (3, 0, 2));
    assert_eq!(r.counts().store_entries, 5);
}

#[test]
fn a_batch_is_recorded_whole_before_it_reaches_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = revocations(dir.path(), Some(1));
    let (recorded, became_full) = r
        .revoke_many(vec![
            token(7, NOW + 60),
            token(8, NOW + 60),
            token(9, NOW + 60),
        ])
        .unwrap();
    assert_eq!(recorded.len(), 3);
    assert!(became_full, "two did not fit");
    for h in [7, 8, 9] {
        assert!(r.get(h).is_some(), "{h} recorded");
    }
    let c = r.counts();
    assert_eq!((c.kernel_tokens, c.overflow), (1, 2));
}

#[test]
fn header_revocations_switch_the_kernel_s_header_scan_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let (r, config) = revocations(dir.path(), None);
    let header = Revocation {
        scope: Scope::SigningKey,
        ..token(42, 0)
    };
    r.revoke(header).unwrap();
    assert_eq!(config.read().unwrap().header_revocations, 1);
    r.unrevoke(42, "key back", NOW).unwrap();
    assert_eq!(config.read().unwrap().header_revocations, 0);
}

#[test]
fn rules_cover_by_jti_kid_and_by_subject_or_client_issued_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = revocations(dir.path(), None);
    let rule = |kind: RuleKind, issuer: Option<&str>, name: &str| Revocation {
        hash: r.rule_hash(kind, issuer, name),
        scope: rules::scope(kind),
        ..token(0, 0)
    };
    r.revoke(rule(RuleKind::Sub, None, "alice")).unwrap();
    r.revoke(rule(RuleKind::Jti, Some("https://a"), "j-1"))
        .unwrap();
    let facts = |sub, jti, iss, iat| RuleFacts {
        sub,
        jti,
        iss,
        iat,
        ..RuleFacts::default()
    };
    let read = r.read();
    assert_eq!(
        read.covering_rule(&facts("alice", "x", "https://b", NOW)),
        Some(RuleKind::Sub)
    );
    assert_eq!(
        read.covering_rule(&facts("alice", "x", "https://b", NOW + 1)),
        None,
        "issued after the subject rule"
    );
    assert_eq!(
        read.covering_rule(&facts("bob", "j-1", "https://a", NOW + 9)),
        Some(RuleKind::Jti)
    );
    assert_eq!(
        read.covering_rule(&facts("bob", "j-1", "https://b", NOW)),
        None,
        "the jti rule is scoped to issuer a"
    );
}

#[test]
fn learned_headers_are_bounded_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = revocations(dir.path(), None);
    for h in 0..rules::MAX_LEARNED_HEADERS_PER_KEY as u64 {
        assert_eq!(r.learn_header("k1", 100 + h), LearnHeader::Allowed);
    }
    assert_eq!(r.learn_header("k1", 999), LearnHeader::Refused);
    assert_eq!(r.learn_header("k2", 999), LearnHeader::Allowed, "per key");
    r.revoke(Revocation {
        scope: Scope::SigningKey,
        ..token(555, 0)
    })
    .unwrap();
    assert_eq!(r.learn_header("k3", 555), LearnHeader::Known);
}
