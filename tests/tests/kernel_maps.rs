//! The revoked map's size: set at load, a full map is a distinguishable error, and a pinned
//! map of another size is replaced rather than reused. Needs root.

use std::path::{Path, PathBuf};

use agent_common::{map_names, revoked::RevokedEntry};
use aya::maps::MapInfo;
use tokenwall::kernel::{
    Kernel, LoadOptions, ReplacedMap,
    maps::{MapError, MapKind},
};
use tokenwall_tests::progs::Pins;

fn dir(tag: &str) -> (PathBuf, Pins) {
    let d = PathBuf::from(format!("/sys/fs/bpf/twt-{}-{tag}", std::process::id()));
    (d.clone(), Pins(d))
}

fn load(dir: &Path, max_revoked: u32) -> Kernel {
    Kernel::load_with(dir, log::LevelFilter::Off, LoadOptions { max_revoked }).unwrap()
}

#[test]
fn a_full_revoked_map_is_a_distinguishable_error() {
    let (d, _pins) = dir("full");
    let mut k = load(&d, 8);
    for h in 0..8 {
        k.insert(h, RevokedEntry::default()).unwrap();
    }
    let err = k.insert(8, RevokedEntry::default()).unwrap_err();
    assert!(matches!(err, MapError::Full(MapKind::Tokens)), "{err:?}");
    // Replacing an existing entry still works in a full map.
    k.insert(
        3,
        RevokedEntry {
            expires_at: 9,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn a_pinned_map_of_another_size_is_replaced_not_reused() {
    let (d, _pins) = dir("resize");
    let mut first = load(&d, 64);
    first.insert(42, RevokedEntry::default()).unwrap();
    assert!(first.replaced_maps().is_empty());
    let pin = d.join("maps").join(map_names::REVOKED);
    assert_eq!(MapInfo::from_pin(&pin).unwrap().max_entries(), 64);
    // Same size: reused, entries kept.
    let same = load(&d, 64);
    assert!(same.replaced_maps().is_empty());
    assert!(same.contains(42));
    // Another size: a new, empty map under the pin; the old one lives on while used.
    let bigger = load(&d, 128);
    assert_eq!(
        bigger.replaced_maps(),
        &[ReplacedMap {
            name: map_names::REVOKED.into(),
            old_max_entries: 64,
            new_max_entries: 128
        }]
    );
    assert_eq!(MapInfo::from_pin(&pin).unwrap().max_entries(), 128);
    assert!(
        !bigger.contains(42),
        "a new map, filled by the daemon from its store"
    );
    assert!(first.contains(42), "the old map is untouched");
}
