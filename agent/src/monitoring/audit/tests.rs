use super::*;

fn entry(i: usize) -> Entry {
    Entry {
        actor: "uid:0".into(),
        action: "revoke".into(),
        subjects: vec![format!("{i:016x}")],
        reason: format!("reason {i}"),
    }
}

fn time(i: usize) -> String {
    format!("2026-11-24T12:{:02}:{:02}Z", i / 60, i % 60)
}

fn write(dir: &Path, n: usize, max_bytes: u64) {
    let mut log = AuditLog::open(dir, max_bytes).unwrap();
    for i in 0..n {
        log.append(entry(i), time(i)).unwrap();
    }
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(CURRENT))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join(CURRENT), lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_chain_verifies_and_continues_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10, DEFAULT_MAX_BYTES);
    write(dir.path(), 5, DEFAULT_MAX_BYTES);
    assert_eq!(verify(dir.path()).unwrap(), Ok(15));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(CURRENT))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn editing_a_line_is_detected_at_that_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10, DEFAULT_MAX_BYTES);
    let mut l = lines(dir.path());
    l[4] = l[4].replace("reason 4", "reason X");
    put(dir.path(), &l);
    let broken = verify(dir.path()).unwrap().unwrap_err();
    assert_eq!(
        (broken.line, broken.reason.contains("altered")),
        (5, true),
        "{broken}"
    );
}

#[test]
fn deleting_a_line_is_detected_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10, DEFAULT_MAX_BYTES);
    let mut l = lines(dir.path());
    l.remove(6);
    put(dir.path(), &l);
    assert_eq!(verify(dir.path()).unwrap().unwrap_err().line, 7);
    // Deleting the last line cannot be seen from inside the file; the sequence number kept by
    // the daemon (and any exported copy) shows it. Deleting the first one can.
    let mut l = lines(dir.path());
    l.remove(0);
    put(dir.path(), &l);
    assert_eq!(verify(dir.path()).unwrap().unwrap_err().line, 1);
}

#[test]
fn reordering_two_lines_is_detected_at_the_first() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10, DEFAULT_MAX_BYTES);
    let mut l = lines(dir.path());
    l.swap(2, 3);
    put(dir.path(), &l);
    assert_eq!(verify(dir.path()).unwrap().unwrap_err().line, 3);
}

#[test]
fn a_crash_mid_record_leaves_a_verifiable_chain() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 5, DEFAULT_MAX_BYTES);
    let full = std::fs::read(dir.path().join(CURRENT)).unwrap();
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    // Every cut inside the last record, as a crash during its write would leave.
    for cut in last_start + 1..full.len() {
        std::fs::write(dir.path().join(CURRENT), &full[..cut]).unwrap();
        let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(verify(dir.path()).unwrap(), Ok(4), "cut at {cut}");
        log.append(entry(99), time(99)).unwrap();
        assert_eq!(verify(dir.path()).unwrap(), Ok(5), "cut at {cut}");
    }
}

#[test]
fn rotation_keeps_the_chain_across_files_and_tampering_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 40, 1024);
    let all = files(dir.path()).unwrap();
    assert!(all.len() > 3, "expected several files, got {all:?}");
    assert_eq!(verify(dir.path()).unwrap(), Ok(40));
    assert_eq!(export(dir.path(), &time(35)).unwrap().len(), 5);
    // Remove a whole rotated file: the next file's first line no longer follows.
    std::fs::remove_file(&all[1]).unwrap();
    let broken = verify(dir.path()).unwrap().unwrap_err();
    assert_eq!(broken.line, 1);
    assert_eq!(
        broken.file,
        all[2].file_name().unwrap().to_string_lossy().into_owned()
    );
}

fn raw(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(CURRENT)).unwrap()
}

#[test]
fn a_damaged_middle_line_is_kept_reported_by_verify_and_the_chain_continues_after_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10, DEFAULT_MAX_BYTES);
    let mut l = lines(dir.path());
    l[3] = l[3][..l[3].len() / 2].to_string(); // line 4 no longer parses
    put(dir.path(), &l);
    let damaged = raw(dir.path());
    let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES).expect("opens");
    assert_eq!(raw(dir.path()), damaged, "nothing was cut");
    assert_eq!(log.append(entry(10), time(10)).unwrap(), 11);
    let after = raw(dir.path());
    assert_eq!(
        &after[..damaged.len()],
        &damaged[..],
        "every line is still there"
    );
    let new: Record = serde_json::from_str(&after[damaged.len()..after.len() - 1]).unwrap();
    assert_eq!(
        new.prev,
        sha256_hex(l[9].as_bytes()),
        "chained from the last line"
    );
    assert_eq!(new.hash, new.compute_hash());
    let broken = verify(dir.path())
        .unwrap()
        .expect_err("verify reports the damage");
    assert_eq!(
        (broken.file.as_str(), broken.line),
        (CURRENT, 4),
        "{broken}"
    );
    assert!(broken.reason.contains("not a record"), "{broken}");
}

#[test]
fn a_damaged_second_to_last_line_survives_while_a_torn_last_line_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 5, DEFAULT_MAX_BYTES);
    let l = lines(dir.path());
    // Line 4 is damaged (complete, but not JSON); line 5 is torn (no newline).
    let mut data = l[..3].join("\n") + "\n";
    data.push_str("{\"seq\":4,garbage\n");
    let kept = data.len();
    data.push_str(&l[4][..20]);
    std::fs::write(dir.path().join(CURRENT), &data).unwrap();
    let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(raw(dir.path()), &data[..kept], "only the torn line was cut");
    assert_eq!(
        log.append(entry(5), time(5)).unwrap(),
        5,
        "the damaged line keeps its sequence number"
    );
    assert_eq!(verify(dir.path()).unwrap().unwrap_err().line, 4);
}

#[test]
fn a_complete_last_line_that_does_not_parse_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 5, DEFAULT_MAX_BYTES);
    let mut l = lines(dir.path());
    l[4] = "\0\0\0\0\0\0".into();
    put(dir.path(), &l);
    let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(lines(dir.path()).len(), 4);
    assert_eq!(verify(dir.path()).unwrap(), Ok(4));
    log.append(entry(5), time(5)).unwrap();
    assert_eq!(verify(dir.path()).unwrap(), Ok(5));
}

#[test]
fn damage_in_a_rotated_file_is_kept_and_the_log_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 40, 1024);
    let all = files(dir.path()).unwrap();
    let rotated = &all[1];
    let mut text = std::fs::read_to_string(rotated).unwrap();
    text.replace_range(0..1, "X");
    std::fs::write(rotated, &text).unwrap();
    let mut log = AuditLog::open(dir.path(), 1024).expect("opens");
    assert_eq!(log.append(entry(40), time(40)).unwrap(), 41);
    assert_eq!(std::fs::read_to_string(rotated).unwrap(), text);
    let broken = verify(dir.path()).unwrap().unwrap_err();
    assert_eq!(
        (broken.file, broken.line),
        (
            rotated.file_name().unwrap().to_string_lossy().into_owned(),
            1
        )
    );
}

#[test]
fn rotation_names_the_file_by_its_first_sequence_even_when_that_line_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 3, DEFAULT_MAX_BYTES);
    let mut l = lines(dir.path());
    l[0] = "damaged".into();
    put(dir.path(), &l);
    let mut log = AuditLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.append(entry(3), time(3)).unwrap(), 4);
    assert!(dir.path().join("audit.1.log").exists());
    assert_eq!(lines(dir.path()).len(), 1);
    let broken = verify(dir.path()).unwrap().unwrap_err();
    assert_eq!((broken.file.as_str(), broken.line), ("audit.1.log", 1));
}
