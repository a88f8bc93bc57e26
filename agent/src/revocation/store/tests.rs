use super::*;

fn rev(hash: u64, expires_at: u64) -> Revocation {
    Revocation {
        hash,
        expires_at,
        reason: format!("r{hash}"),
        revoked_at: 100,
        api_key: false,
        scope: Scope::Token,
    }
}

fn hashes(s: &RevocationStore) -> Vec<u64> {
    let mut v: Vec<u64> = s.entries().map(|r| r.hash).collect();
    v.sort();
    v
}

#[test]
fn revocations_survive_reopen_and_unrevoke_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    assert!(s.revoke(rev(1, 0)).unwrap());
    assert!(s.revoke(rev(2, 0)).unwrap());
    assert!(s.unrevoke(1, "mistake", 5).unwrap());
    assert!(!s.unrevoke(99, "unknown", 5).unwrap());
    drop(s);
    let (s, report) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(hashes(&s), vec![2]);
    assert_eq!(report.records, 4);
    assert_eq!(report.torn_tail_bytes, 0);
    let mode = std::fs::metadata(dir.path().join(LOG))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.mode() & 0o777, 0o600);
}

#[test]
fn revoking_twice_keeps_the_later_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    assert!(s.revoke(rev(7, 500)).unwrap());
    assert!(!s.revoke(rev(7, 300)).unwrap());
    assert_eq!(s.get(7).unwrap().expires_at, 500);
    assert!(!s.revoke(rev(7, 900)).unwrap());
    assert_eq!(s.get(7).unwrap().expires_at, 900);
    assert!(!s.revoke(rev(7, 0)).unwrap());
    assert!(!s.revoke(rev(7, 1000)).unwrap());
    assert_eq!(s.get(7).unwrap().expires_at, 0, "never outlasts any time");
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(s.get(7).unwrap().expires_at, 0);
}

#[test]
fn expired_entries_are_purged_and_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    for (h, exp) in [(1, 50), (2, 150), (3, 0), (4, 100)] {
        s.revoke(rev(h, exp)).unwrap();
    }
    let mut gone = s.purge_expired(100);
    gone.sort();
    assert_eq!(gone, vec![1, 4]);
    assert_eq!(hashes(&s), vec![2, 3]);
    drop(s);
    let (s, report) = RevocationStore::open(dir.path(), 200).unwrap();
    assert_eq!(hashes(&s), vec![3]);
    assert_eq!(report.expired_dropped, 3);
}

#[test]
fn a_torn_last_record_is_dropped_at_every_cut_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    for h in 1..=5 {
        s.revoke(rev(h, 0)).unwrap();
    }
    let good = s.log_bytes();
    s.revoke(rev(6, 0)).unwrap();
    let full = s.log_bytes();
    drop(s);
    let path = dir.path().join(LOG);
    let pristine = std::fs::read(&path).unwrap();
    for cut in good + 1..full {
        std::fs::write(&path, &pristine[..cut as usize]).unwrap();
        let (mut s, report) = RevocationStore::open(dir.path(), 0).unwrap();
        assert_eq!(hashes(&s), vec![1, 2, 3, 4, 5], "cut at {cut}");
        assert_eq!(report.torn_tail_bytes, cut - good);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        s.revoke(rev(42, 0)).unwrap();
        drop(s);
        let (s, _) = RevocationStore::open(dir.path(), 0).unwrap();
        assert_eq!(hashes(&s), vec![1, 2, 3, 4, 5, 42], "cut at {cut}");
    }
}

#[test]
fn a_bad_checksum_or_zero_fill_at_the_end_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    s.revoke(rev(1, 0)).unwrap();
    let good = s.log_bytes();
    s.revoke(rev(2, 0)).unwrap();
    drop(s);
    let path = dir.path().join(LOG);
    let mut data = std::fs::read(&path).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let (s, report) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(hashes(&s), vec![1]);
    assert!(report.torn_tail_bytes > 0);
    drop(s);
    let mut data = std::fs::read(&path).unwrap();
    data.extend_from_slice(&[0u8; 37]);
    std::fs::write(&path, &data).unwrap();
    let (s, report) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!((hashes(&s), report.torn_tail_bytes), (vec![1], 37));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
}

#[test]
fn damage_before_good_records_is_an_error_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    for h in 1..=3 {
        s.revoke(rev(h, 0)).unwrap();
    }
    drop(s);
    let path = dir.path().join(LOG);
    let mut data = std::fs::read(&path).unwrap();
    data[MAGIC.len() + 12] ^= 0x55; // inside the first payload
    std::fs::write(&path, &data).unwrap();
    let err = RevocationStore::open(dir.path(), 0)
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, StoreError::Corrupt { offset: 8, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("left untouched"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[test]
fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LOG), b"something else entirely").unwrap();
    let err = RevocationStore::open(dir.path(), 0)
        .err()
        .expect("must refuse");
    assert!(matches!(err, StoreError::BadHeader(_)));
}

#[test]
fn compaction_keeps_exactly_the_live_set() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    for h in 0..2000u64 {
        s.revoke(Revocation {
            reason: "x".repeat(600),
            ..rev(h, if h % 5 == 0 { 50 } else { 0 })
        })
        .unwrap();
    }
    for h in (0..2000u64).filter(|h| h % 3 != 0) {
        s.unrevoke(h, "y", 10).unwrap();
    }
    let expect: Vec<u64> = (0..2000u64).filter(|h| h % 3 == 0 && h % 5 != 0).collect();
    let before = s.log_bytes();
    s.purge_expired(100);
    assert!(s.should_compact(), "{} bytes for {} live", before, s.len());
    s.compact(100).unwrap();
    assert!(s.log_bytes() < before);
    assert_eq!(hashes(&s), expect);
    s.revoke(rev(5000, 0)).unwrap();
    drop(s);
    let (s, report) = RevocationStore::open(dir.path(), 100).unwrap();
    let mut with_new = expect.clone();
    with_new.push(5000);
    assert_eq!(hashes(&s), with_new);
    assert_eq!(report.records as usize, with_new.len());
}

#[test]
fn long_reasons_are_clipped_on_a_char_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    s.revoke(Revocation {
        reason: "é".repeat(MAX_REASON),
        ..rev(1, 0)
    })
    .unwrap();
    assert!(s.get(1).unwrap().reason.len() <= MAX_REASON);
}

#[test]
fn scope_survives_replay_and_older_records_default_to_token() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    s.revoke(Revocation {
        scope: Scope::SigningKey,
        ..rev(9, 0)
    })
    .unwrap();
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(s.get(9).unwrap().scope, Scope::SigningKey);
    let old: Revocation = serde_json::from_str(
        r#"{"hash":"0000000000000001","expires_at":0,"reason":"","revoked_at":1}"#,
    )
    .unwrap();
    assert_eq!(old.scope, Scope::Token);
}

/// Plans `times` failures of `op` on `s`'s file layer.
fn fail(s: &mut RevocationStore, op: Op, times: u32) {
    s.faults.planned.push((op, times));
}

fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG)).unwrap().len()
}

#[test]
fn a_short_write_is_cut_back_and_the_next_append_lands_after_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    s.revoke(rev(1, 0)).unwrap();
    s.revoke(rev(2, 0)).unwrap();
    let good = s.log_bytes();
    fail(&mut s, Op::Write, 1);
    let err = s.revoke(rev(3, 0)).expect_err("the write fails");
    assert!(matches!(err, StoreError::Append { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("No space left on device") && msg.contains("nothing was recorded"),
        "{msg}"
    );
    assert_eq!(file_len(dir.path()), good, "the half record was cut off");
    assert_eq!(s.log_bytes(), good);
    assert_eq!(hashes(&s), vec![1, 2], "not applied either");
    s.revoke(rev(4, 0)).unwrap();
    drop(s);
    let (s, report) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(hashes(&s), vec![1, 2, 4]);
    assert_eq!((report.records, report.torn_tail_bytes), (3, 0));
}

#[test]
fn a_failed_fsync_is_cut_back_so_an_unacknowledged_change_never_reappears() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    s.revoke(rev(1, 0)).unwrap();
    let good = s.log_bytes();
    fail(&mut s, Op::Sync, 1);
    let err = s.revoke(rev(2, 0)).expect_err("the fsync fails");
    assert!(matches!(err, StoreError::Append { .. }), "{err}");
    fail(&mut s, Op::Sync, 1);
    let err = s.unrevoke(1, "oops", 5).expect_err("the fsync fails");
    assert!(matches!(err, StoreError::Append { .. }), "{err}");
    assert_eq!(file_len(dir.path()), good);
    assert_eq!(hashes(&s), vec![1], "neither change was applied");
    drop(s);
    let (s, report) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(hashes(&s), vec![1]);
    assert_eq!(report.records, 1);
}

#[test]
fn when_the_cut_fails_too_the_store_refuses_changes_until_reopened_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    s.revoke(rev(1, 0)).unwrap();
    s.revoke(rev(2, 0)).unwrap();
    let good = s.log_bytes();
    fail(&mut s, Op::Write, 1);
    fail(&mut s, Op::Truncate, 1);
    let err = s.revoke(rev(3, 0)).expect_err("the write and the cut fail");
    assert!(matches!(err, StoreError::Failed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("No space left on device")
            && msg.contains("Input/output error")
            && msg.contains("nothing more is appended until tokenwall restarts"),
        "{msg}"
    );
    let garbage = file_len(dir.path());
    assert!(garbage > good, "the half record is still there");
    // No fault is planned any more, yet nothing may land after the half record.
    let err = s.revoke(rev(4, 0)).expect_err("refused");
    assert!(matches!(err, StoreError::Failed { .. }), "{err}");
    assert!(matches!(
        s.unrevoke(1, "x", 5),
        Err(StoreError::Failed { .. })
    ));
    assert!(matches!(s.compact(5), Err(StoreError::Failed { .. })));
    assert_eq!(file_len(dir.path()), garbage);
    assert_eq!(hashes(&s), vec![1, 2]);
    drop(s);
    let (mut s, report) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(hashes(&s), vec![1, 2]);
    assert_eq!(report.torn_tail_bytes, garbage - good);
    s.revoke(rev(5, 0)).unwrap();
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 0).unwrap();
    assert_eq!(hashes(&s), vec![1, 2, 5]);
}

/// A store whose log is mostly dead: 40 of 400 entries live.
fn compactable(dir: &Path) -> RevocationStore {
    let (mut s, _) = RevocationStore::open(dir, 0).unwrap();
    for h in 0..400u64 {
        s.revoke(rev(h, 0)).unwrap();
    }
    for h in (0..400u64).filter(|h| h % 10 != 0) {
        s.unrevoke(h, "y", 10).unwrap();
    }
    s
}

fn live_after_compaction() -> Vec<u64> {
    (0..400u64).filter(|h| h % 10 == 0).collect()
}

#[test]
fn a_failed_directory_sync_after_compaction_refuses_changes_until_the_new_log_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = compactable(dir.path());
    fail(&mut s, Op::DirSync, 2);
    let err = s.compact(20).expect_err("the directory sync fails");
    assert!(matches!(err, StoreError::Failed { .. }), "{err}");
    assert!(
        err.to_string().contains("syncing the directory failed"),
        "{err}"
    );
    let compacted = file_len(dir.path());
    assert_eq!(compacted, s.log_bytes());
    // The retry fails as well: the revocation is refused, not written to the replaced file.
    let err = s.revoke(rev(1000, 0)).expect_err("refused");
    assert!(
        matches!(err, StoreError::Failed { .. }) && err.to_string().contains("retrying failed too"),
        "{err}"
    );
    assert!(s.get(1000).is_none());
    // The next retry succeeds, and the change goes to the new log.
    s.revoke(rev(1001, 0)).unwrap();
    assert!(file_len(dir.path()) > compacted);
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 20).unwrap();
    let mut expect = live_after_compaction();
    expect.push(1001);
    assert_eq!(hashes(&s), expect);
}

#[test]
fn a_failed_reopen_after_compaction_never_appends_to_the_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = compactable(dir.path());
    fail(&mut s, Op::Reopen, 4);
    let err = s.compact(20).expect_err("opening the new log fails");
    assert!(
        matches!(err, StoreError::Failed { .. })
            && err.to_string().contains("opening the new log failed"),
        "{err}"
    );
    for h in [1000, 1001] {
        assert!(matches!(
            s.revoke(rev(h, 0)),
            Err(StoreError::Failed { .. })
        ));
    }
    assert!(matches!(
        s.unrevoke(0, "x", 20),
        Err(StoreError::Failed { .. })
    ));
    // A restart at this point finds every acknowledged entry.
    let (reopened, _) = RevocationStore::open(dir.path(), 20).unwrap();
    assert_eq!(hashes(&reopened), live_after_compaction());
    drop(reopened);
    s.revoke(rev(1002, 0)).unwrap();
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 20).unwrap();
    let mut expect = live_after_compaction();
    expect.push(1002);
    assert_eq!(hashes(&s), expect);
}

#[test]
fn a_failed_compaction_before_the_rename_keeps_the_old_log_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = compactable(dir.path());
    let before = s.log_bytes();
    // A directory where the temp file goes makes creating it fail.
    std::fs::create_dir(dir.path().join(format!("{LOG}.compact"))).unwrap();
    assert!(matches!(s.compact(20), Err(StoreError::Io { .. })));
    std::fs::remove_dir(dir.path().join(format!("{LOG}.compact"))).unwrap();
    assert_eq!(s.log_bytes(), before);
    s.revoke(rev(1000, 0)).unwrap();
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 20).unwrap();
    let mut expect = live_after_compaction();
    expect.push(1000);
    assert_eq!(hashes(&s), expect);
}

fn recount(s: &RevocationStore) -> u64 {
    MAGIC.len() as u64 + s.live.values().map(revoke_len).sum::<u64>()
}

#[derive(Clone, Debug)]
enum Action {
    Revoke {
        hash: u64,
        expires_at: u64,
        reason: String,
    },
    Unrevoke(u64),
    Purge(u64),
    Compact(u64),
    Reopen(u64),
}

fn action() -> impl proptest::strategy::Strategy<Value = Action> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0..24u64, prop_oneof![Just(0u64), 1..200u64], "[a-zé]{0,40}")
            .prop_map(|(hash, expires_at, reason)| Action::Revoke { hash, expires_at, reason }),
        3 => (0..24u64).prop_map(Action::Unrevoke),
        1 => (0..200u64).prop_map(Action::Purge),
        1 => (0..200u64).prop_map(Action::Compact),
        1 => (0..200u64).prop_map(Action::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn the_running_live_size_equals_a_full_recount_after_any_operations(
        actions in proptest::collection::vec(action(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = RevocationStore::open(dir.path(), 0).unwrap();
        for a in actions {
            match a {
                Action::Revoke { hash, expires_at, reason } => {
                    s.revoke(Revocation { reason, ..rev(hash, expires_at) }).unwrap();
                }
                Action::Unrevoke(h) => {
                    s.unrevoke(h, "u", 0).unwrap();
                }
                Action::Purge(now) => {
                    s.purge_expired(now);
                }
                Action::Compact(now) => {
                    s.compact(now).unwrap();
                    proptest::prop_assert_eq!(s.log_bytes(), s.compacted_bytes());
                }
                Action::Reopen(now) => {
                    drop(s);
                    s = RevocationStore::open(dir.path(), now).unwrap().0;
                }
            }
            proptest::prop_assert_eq!(s.compacted_bytes(), recount(&s));
            proptest::prop_assert_eq!(
                s.should_compact(),
                s.log_bytes() > 1 << 20 && s.log_bytes() > 2 * recount(&s)
            );
        }
    }
}

#[test]
fn a_compaction_rename_that_reports_an_error_but_happened_is_followed_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = compactable(dir.path());
    fail(&mut s, Op::Rename, 1);
    s.compact(20)
        .expect("the new log is in place, synced and open");
    assert_eq!(file_len(dir.path()), s.log_bytes());
    s.revoke(rev(1000, 0)).unwrap();
    drop(s);
    let (s, _) = RevocationStore::open(dir.path(), 20).unwrap();
    let mut expect = live_after_compaction();
    expect.push(1000);
    assert_eq!(hashes(&s), expect, "the revocation went to the new log");
}
