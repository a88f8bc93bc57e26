use super::*;

fn store() -> (tempfile::TempDir, RefreshStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = RefreshStore::open(dir.path()).unwrap();
    (dir, s)
}

fn rotated(r: Rotation) -> (String, Family, String) {
    match r {
        Rotation::Rotated {
            family_id,
            family,
            refresh_token,
        } => (family_id, family, refresh_token),
        other => panic!("expected a rotation, got {other:?}"),
    }
}

#[test]
fn rotation_retires_the_old_token_and_reuse_ends_the_family() {
    let (_d, mut s) = store();
    let (id, first) = s
        .create("alice", "login", vec!["read".into()], 100, 3600)
        .unwrap();
    s.record_access(&id, 7, 1000, 100).unwrap();
    let (id2, fam, second) = rotated(s.rotate(&first, 110, 0).unwrap());
    assert_eq!(id2, id);
    assert_eq!(fam.sub, "alice");
    assert_ne!(second, first);
    assert!(second.starts_with(REFRESH_PREFIX));
    match s.rotate(&first, 111, 0).unwrap() {
        Rotation::Reused { family_id, family } => {
            assert_eq!(family_id, id);
            assert_eq!(
                family.access,
                vec![(7, 1000)],
                "the family's access tokens are handed back"
            );
        }
        other => panic!("reuse not detected: {other:?}"),
    }
    assert_eq!(
        s.rotate(&second, 112, 0).unwrap(),
        Rotation::Unknown,
        "the whole family ended"
    );
    assert!(s.is_empty());
}

#[test]
fn a_retired_token_rotates_within_the_grace_window_only() {
    let (_d, mut s) = store();
    let (_, first) = s.create("bob", "login", vec![], 100, 3600).unwrap();
    let (_, _, _second) = rotated(s.rotate(&first, 200, 5).unwrap());
    // The response carrying `_second` was lost: the client retries with `first`.
    let (_, _, third) = rotated(s.rotate(&first, 205, 5).unwrap());
    let (_, _, _) = rotated(s.rotate(&third, 206, 5).unwrap());
    assert!(matches!(
        s.rotate(&first, 300, 5).unwrap(),
        Rotation::Reused { .. }
    ));
}

#[test]
fn the_grace_window_allows_exactly_one_extra_rotation() {
    let (_d, mut s) = store();
    let (_, first) = s.create("bob", "login", vec![], 100, 3600).unwrap();
    let (_, _, _second) = rotated(s.rotate(&first, 200, 60).unwrap());
    let (_, _, _third) = rotated(s.rotate(&first, 201, 60).unwrap());
    // Still inside the window, but `first` has had its one extra rotation: reuse.
    assert!(matches!(
        s.rotate(&first, 202, 60).unwrap(),
        Rotation::Reused { .. }
    ));
}

#[test]
fn expired_and_unknown_tokens_rotate_to_nothing() {
    let (_d, mut s) = store();
    let (_, t) = s.create("carol", "login", vec![], 100, 50).unwrap();
    assert_eq!(s.rotate("twr_nonsense", 120, 0).unwrap(), Rotation::Unknown);
    assert_eq!(s.rotate(&t, 150, 0).unwrap(), Rotation::Unknown);
    assert!(s.is_empty(), "an expired family is dropped when presented");
}

#[test]
fn state_survives_reopening_and_keeps_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RefreshStore::open(dir.path()).unwrap();
    let (_, t) = s
        .create("dave", "login", vec!["x".into()], 100, 3600)
        .unwrap();
    s.set_claims("dave", serde_json::json!({"tier": "gold"}))
        .unwrap();
    drop(s);
    let raw = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
    assert!(
        !raw.contains(&t[REFRESH_PREFIX.len()..]),
        "refresh token stored in plaintext"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut s = RefreshStore::open(dir.path()).unwrap();
    assert_eq!(s.claims("dave")["tier"], "gold");
    assert!(matches!(
        s.rotate(&t, 200, 0).unwrap(),
        Rotation::Rotated { .. }
    ));
}

#[test]
fn ending_by_predicate_removes_every_match() {
    let (_d, mut s) = store();
    let (_, a) = s.create("erin", "login", vec![], 100, 3600).unwrap();
    s.create("erin", "login", vec![], 100, 3600).unwrap();
    let (_, keep) = s.create("frank", "login", vec![], 100, 3600).unwrap();
    let ended = s.end_where(|f| f.sub == "erin").unwrap();
    assert_eq!(ended.len(), 2);
    assert_eq!(s.rotate(&a, 101, 0).unwrap(), Rotation::Unknown);
    assert!(matches!(
        s.rotate(&keep, 101, 0).unwrap(),
        Rotation::Rotated { .. }
    ));
}
