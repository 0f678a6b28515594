//! Simulated power loss, in process, with no hooks in the log code.
//!
//! For each append of a workload we copy the directory's bytes before and
//! after the append and diff them per 4096-byte page. A crash during the
//! append can leave any subset of those dirtied pages on disk, and a page can
//! be torn at 512-byte sector boundaries (some sectors new, the rest old,
//! zero or garbage). A segment created by the append may be absent, empty,
//! only partly there, or still under its `.tmp` name. Each such crash image
//! is written into a scratch directory and recovered; the assertions:
//! - `recover` never errors and never panics;
//! - it returns exactly the previous record or the new one, byte for byte
//!   (never a mixture, never anything else);
//! - the new one exactly when all of its bytes (segment header if the
//!   append created the segment, record header, payload) are in the image.
//!   (Garbage in the unused tail of a header page or after the payload end
//!   does not matter and is not required to be the new bytes.)
//!
//! For a sample of images, a writer is then opened on a copy of the image,
//! appends, and a fresh `recover` must return that new record.
//!
//! Deterministic: seed from EPOCHWAL_CRASH_SEED (default below); every
//! failure prints the scenario, the image number and its recipe.

mod common;
mod walkit;

use std::fs;
use std::path::Path;

use epochwal::wal::format::{self, PAGE, RECORD_HEADER_LEN};
use epochwal::wal::{Log, LogOptions};
use walkit::*;

const SECTOR: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    Old,
    Zero,
    Garbage,
}

/// What one dirtied page looks like in a crash image.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PageState {
    Old,
    New,
    /// Sectors whose bit is set in `mask` are new, the others `fill`.
    Torn {
        mask: u8,
        fill: Fill,
    },
    /// The whole page is random bytes.
    Garbage,
}

/// How a segment file created by the append appears after the crash.
#[derive(Clone, Copy, Debug, PartialEq)]
enum NewFile {
    /// Full length; its pages follow the page states.
    Present,
    Absent,
    Empty,
    /// Only the first page (the segment header) made it; file is 4096 bytes.
    HeaderOnlyShort,
    /// The rename never happened: contents under `NNN.wal.tmp`.
    StillTmp,
}

#[derive(Clone, Debug)]
struct Unit {
    file: String,
    page: usize,
    old: Vec<u8>,
    new: Vec<u8>,
}

struct Scenario {
    name: &'static str,
    before: Snapshot,
    after: Snapshot,
    /// The segment file the append created, if any.
    new_file: Option<String>,
    units: Vec<Unit>,
    prev: Option<u64>,
    new: Written,
    written: Vec<Written>,
}

#[derive(Clone, Debug)]
struct Image {
    states: Vec<PageState>,
    file: NewFile,
    seed: u64,
    recipe: &'static str,
}

fn is_segment(name: &str) -> bool {
    format::parse_segment_file_name(name).is_some()
}

fn page_of(bytes: &[u8], i: usize) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_US];
    let s = i * PAGE_US;
    if s < bytes.len() {
        let e = (s + PAGE_US).min(bytes.len());
        p[..e - s].copy_from_slice(&bytes[s..e]);
    }
    p
}

fn build_scenario(
    name: &'static str,
    dir: &Path,
    log: &mut Log,
    tensor_bytes: usize,
    epoch: u64,
    written: &mut Vec<Written>,
) -> Scenario {
    let before = snapshot(dir);
    let d = log
        .append(&common::sample_state(tensor_bytes, epoch))
        .unwrap();
    let after = snapshot(dir);
    let seg_name = d.path.file_name().unwrap().to_str().unwrap().to_string();
    let new = written_from_disk(dir, &seg_name, &d.header);
    let prev = written.last().map(|w| w.header.sequence);
    written.push(new.clone());
    let mut units = Vec::new();
    let mut new_file = None;
    for (file, a) in &after {
        if !is_segment(file) {
            continue;
        }
        let b = before.get(file);
        if b.is_none() {
            new_file = Some(file.clone());
        }
        let empty = Vec::new();
        let b = b.unwrap_or(&empty);
        assert!(b.is_empty() || b.len() == a.len(), "segment size changed");
        for i in 0..a.len().div_ceil(PAGE_US) {
            let (o, n) = (page_of(b, i), page_of(a, i));
            if o != n {
                units.push(Unit {
                    file: file.clone(),
                    page: i,
                    old: o,
                    new: n,
                });
            }
        }
    }
    for file in before.keys() {
        assert!(
            after.contains_key(file) || !is_segment(file),
            "an append deleted {file}"
        );
    }
    Scenario {
        name,
        before,
        after,
        new_file,
        units,
        prev,
        new,
        written: written.clone(),
    }
}

fn sector_fill(rng: &mut Rng, fill: Fill, old: &[u8], out: &mut [u8]) {
    match fill {
        Fill::Old => out.copy_from_slice(old),
        Fill::Zero => out.fill(0),
        Fill::Garbage => rng.fill(out),
    }
}

fn render(unit: &Unit, state: PageState, rng: &mut Rng) -> Vec<u8> {
    match state {
        PageState::Old => unit.old.clone(),
        PageState::New => unit.new.clone(),
        PageState::Garbage => {
            let mut p = vec![0u8; PAGE_US];
            rng.fill(&mut p);
            p
        }
        PageState::Torn { mask, fill } => {
            let mut p = unit.new.clone();
            for s in 0..PAGE_US / SECTOR {
                if mask & (1 << s) == 0 {
                    let r = s * SECTOR..(s + 1) * SECTOR;
                    sector_fill(rng, fill, &unit.old[r.clone()], &mut p[r]);
                }
            }
            p
        }
    }
}

/// Writes the image into `dir` (whose contents are replaced).
fn write_image(sc: &Scenario, img: &Image, dir: &Path) {
    let mut rng = Rng::new(img.seed);
    let mut files: Snapshot = sc.before.clone();
    // non-segment files (LOCK, COMMIT) as after the append: recovery ignores them
    for (k, v) in &sc.after {
        if !is_segment(k) {
            files.insert(k.clone(), v.clone());
        }
    }
    if let Some(nf) = &sc.new_file {
        files.insert(nf.clone(), vec![0u8; sc.after[nf].len()]);
    }
    for (u, st) in sc.units.iter().zip(&img.states) {
        let page = render(u, *st, &mut rng);
        let f = files.get_mut(&u.file).unwrap();
        let s = u.page * PAGE_US;
        let e = (s + PAGE_US).min(f.len());
        f[s..e].copy_from_slice(&page[..e - s]);
    }
    if let Some(nf) = &sc.new_file {
        match img.file {
            NewFile::Present => {}
            NewFile::Absent => {
                files.remove(nf);
            }
            NewFile::Empty => {
                files.insert(nf.clone(), Vec::new());
            }
            NewFile::HeaderOnlyShort => {
                let b = files[nf][..PAGE_US].to_vec();
                files.insert(nf.clone(), b);
            }
            NewFile::StillTmp => {
                let b = files.remove(nf).unwrap();
                files.insert(format!("{nf}.tmp"), b);
            }
        }
    }
    write_snapshot(dir, &files);
}

/// Whether every byte that makes up the new record is in the image.
fn new_record_complete(sc: &Scenario, dir: &Path) -> bool {
    let path = dir.join(&sc.new.segment);
    let Ok(bytes) = fs::read(&path) else {
        return false;
    };
    let after = &sc.after[&sc.new.segment];
    if bytes.len() != after.len() {
        return false;
    }
    let h = &sc.new.header;
    // The segment header does not count: a damaged one hides none of the
    // records behind it (FORMAT.md §5.2).
    let ranges = [
        h.offset as usize..h.offset as usize + RECORD_HEADER_LEN,
        h.payload_offset() as usize..(h.payload_offset() + h.payload_len) as usize,
    ];
    ranges.iter().all(|r| bytes[r.clone()] == after[r.clone()])
}

fn images_for(sc: &Scenario, rng: &mut Rng) -> Vec<Image> {
    let n = sc.units.len();
    let mut out = Vec::new();
    let mut push = |states: Vec<PageState>, file: NewFile, recipe: &'static str, rng: &mut Rng| {
        out.push(Image {
            states,
            file,
            seed: rng.next_u64(),
            recipe,
        });
    };
    let header_unit = sc
        .units
        .iter()
        .position(|u| u.file == sc.new.segment && (u.page as u64) * PAGE == sc.new.header.offset)
        .expect("the header page is dirtied");
    // old/new subsets
    if n <= 10 {
        for m in 0u32..(1 << n) {
            let st = (0..n)
                .map(|i| {
                    if m & (1 << i) != 0 {
                        PageState::New
                    } else {
                        PageState::Old
                    }
                })
                .collect();
            push(st, NewFile::Present, "subset (exhaustive)", rng);
        }
    } else {
        for k in 0..=n {
            push(
                (0..n)
                    .map(|i| {
                        if i < k {
                            PageState::New
                        } else {
                            PageState::Old
                        }
                    })
                    .collect(),
                NewFile::Present,
                "prefix",
                rng,
            );
            push(
                (0..n)
                    .map(|i| {
                        if i >= n - k {
                            PageState::New
                        } else {
                            PageState::Old
                        }
                    })
                    .collect(),
                NewFile::Present,
                "suffix",
                rng,
            );
        }
        for j in 0..n {
            push(
                (0..n)
                    .map(|i| {
                        if i != j {
                            PageState::New
                        } else {
                            PageState::Old
                        }
                    })
                    .collect(),
                NewFile::Present,
                "all but one",
                rng,
            );
            push(
                (0..n)
                    .map(|i| {
                        if i == j {
                            PageState::New
                        } else {
                            PageState::Old
                        }
                    })
                    .collect(),
                NewFile::Present,
                "only one",
                rng,
            );
        }
        push(
            (0..n)
                .map(|i| {
                    if i == header_unit {
                        PageState::New
                    } else {
                        PageState::Old
                    }
                })
                .collect(),
            NewFile::Present,
            "header page only",
            rng,
        );
        push(
            (0..n)
                .map(|i| {
                    if i != header_unit {
                        PageState::New
                    } else {
                        PageState::Old
                    }
                })
                .collect(),
            NewFile::Present,
            "payload only",
            rng,
        );
        for _ in 0..300 {
            let st = (0..n)
                .map(|_| {
                    if rng.chance(1, 2) {
                        PageState::New
                    } else {
                        PageState::Old
                    }
                })
                .collect();
            push(st, NewFile::Present, "random subset", rng);
        }
    }
    // torn pages: one page torn, all others new (the hardest case to tell)
    let per_unit_masks = if n <= 10 { 6 } else { 3 };
    for j in 0..n {
        for fill in [Fill::Old, Fill::Zero, Fill::Garbage] {
            for t in 0..per_unit_masks {
                // always include "only the first sector" and "all but the last"
                let mask = match t {
                    0 => 0b0000_0001,
                    1 => 0b0111_1111,
                    _ => (rng.below(254) + 1) as u8,
                };
                let st = (0..n)
                    .map(|i| {
                        if i == j {
                            PageState::Torn { mask, fill }
                        } else {
                            PageState::New
                        }
                    })
                    .collect();
                push(st, NewFile::Present, "one torn page, rest new", rng);
            }
        }
        let st = (0..n)
            .map(|i| {
                if i == j {
                    PageState::Garbage
                } else {
                    PageState::New
                }
            })
            .collect();
        push(st, NewFile::Present, "one garbage page, rest new", rng);
    }
    // mixtures of everything
    for _ in 0..150 {
        let st = (0..n)
            .map(|_| match rng.below(6) {
                0 | 1 => PageState::New,
                2 => PageState::Old,
                3 => PageState::Garbage,
                _ => PageState::Torn {
                    mask: rng.next_u64() as u8,
                    fill: [Fill::Old, Fill::Zero, Fill::Garbage][rng.below(3) as usize],
                },
            })
            .collect();
        push(st, NewFile::Present, "random mixture", rng);
    }
    // a segment created by the append: directory states
    if sc.new_file.is_some() {
        let all_new: Vec<PageState> = vec![PageState::New; n];
        for f in [
            NewFile::Absent,
            NewFile::Empty,
            NewFile::HeaderOnlyShort,
            NewFile::StillTmp,
        ] {
            push(all_new.clone(), f, "new segment file state", rng);
            let hdr_only = (0..n)
                .map(|i| {
                    if i == 0 {
                        PageState::New
                    } else {
                        PageState::Old
                    }
                })
                .collect();
            push(hdr_only, f, "new segment file state, header only", rng);
        }
    }
    out
}

struct Totals {
    images: usize,
    new_recovered: usize,
    prev_recovered: usize,
    life_after: usize,
}

fn check_scenario(sc: &Scenario, seed: u64, totals: &mut Totals) {
    let mut rng = Rng::new(seed);
    let images = images_for(sc, &mut rng);
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut new_count = 0;
    for (idx, img) in images.iter().enumerate() {
        write_image(sc, img, scratch.path());
        let complete = new_record_complete(sc, scratch.path());
        let expect = if complete {
            Some(sc.new.header.sequence)
        } else {
            sc.prev
        };
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            recovered(scratch.path(), &sc.written)
        }));
        let describe = || {
            format!(
                "scenario {} seed {seed:#x} image {idx} ({}): file {:?}, pages {:?}, image seed {:#x}",
                sc.name,
                img.recipe,
                img.file,
                sc.units.iter().zip(&img.states).map(|(u, s)| format!("{}#{}={s:?}", &u.file[16..20], u.page)).collect::<Vec<_>>(),
                img.seed
            )
        };
        match res {
            Err(_) => failures.push(format!("PANIC or error in recover: {}", describe())),
            Ok((got, r)) => {
                if got != expect {
                    failures.push(format!("recovered {got:?}, expected {expect:?} (complete={complete}): {}; skipped {:?}", describe(), reasons(&r)));
                }
                if got == Some(sc.new.header.sequence) {
                    new_count += 1;
                }
            }
        }
        if failures.len() > 5 {
            break;
        }
        // life after recovery, for a sample
        if idx % 40 == 7 && failures.is_empty() {
            let copy = copy_dir(scratch.path());
            let (mut log, _) = Log::open(
                copy.path(),
                LogOptions {
                    segment_bytes: 256 << 10,
                    ..Default::default()
                },
            )
            .unwrap();
            let d = log.append(&common::sample_state(8 << 10, 1000)).unwrap();
            drop(log);
            let got = epochwal::wal::recover(copy.path()).unwrap();
            let m = got.record.expect("the record appended after recovery");
            assert_eq!(m.header().sequence, d.header.sequence);
            assert!(d.header.sequence > expect.unwrap_or(0), "{}", describe());
            let name = d.path.file_name().unwrap().to_str().unwrap();
            assert!(
                !scratch.path().join(name).exists(),
                "appended into an existing segment: {}",
                describe()
            );
            totals.life_after += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "crash images: scenario {:<38} {:>3} dirtied pages, {:>4} images, new record recovered in {:>4}",
        sc.name,
        sc.units.len(),
        images.len(),
        new_count
    );
    totals.images += images.len();
    totals.new_recovered += new_count;
    totals.prev_recovered += images.len() - new_count;
    // sanity: the generator covers both outcomes
    assert!(
        new_count > 0 && new_count < images.len(),
        "{}: degenerate image set",
        sc.name
    );
}

fn seed() -> u64 {
    std::env::var("EPOCHWAL_CRASH_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5EED_C0FF_EE00_0001)
}

#[test]
fn every_crash_image_of_an_append_recovers_the_old_or_the_new_record() {
    let seed = seed();
    println!("EPOCHWAL_CRASH_SEED={seed:x}");
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 160 << 10,
        ..Default::default()
    };
    let mut written = Vec::new();
    let mut scenarios = Vec::new();
    {
        let (mut log, _) = Log::open(dir.path(), o).unwrap();
        scenarios.push(build_scenario(
            "first append (creates segment 1)",
            dir.path(),
            &mut log,
            16 << 10,
            1,
            &mut written,
        ));
        scenarios.push(build_scenario(
            "append into the same segment",
            dir.path(),
            &mut log,
            16 << 10,
            2,
            &mut written,
        ));
        scenarios.push(build_scenario(
            "append, 8 dirtied pages",
            dir.path(),
            &mut log,
            24 << 10,
            3,
            &mut written,
        ));
        scenarios.push(build_scenario(
            "append, 64 KiB record",
            dir.path(),
            &mut log,
            64 << 10,
            4,
            &mut written,
        ));
        // segment 1 (160 KiB) is now nearly full: the next append rotates
        scenarios.push(build_scenario(
            "append that rotates to segment 2",
            dir.path(),
            &mut log,
            16 << 10,
            5,
            &mut written,
        ));
        assert_eq!(scenarios[4].new_file.as_deref(), Some(seg(2).as_str()));
    }
    {
        // a reopened writer starts a new segment; a 256 KiB record is
        // larger than segment_bytes and gets a segment of its own
        let (mut log, _) = Log::open(dir.path(), o).unwrap();
        scenarios.push(build_scenario(
            "reopen, 256 KiB record in segment 3",
            dir.path(),
            &mut log,
            256 << 10,
            6,
            &mut written,
        ));
        assert_eq!(scenarios[5].new_file.as_deref(), Some(seg(3).as_str()));
    }
    let mut totals = Totals {
        images: 0,
        new_recovered: 0,
        prev_recovered: 0,
        life_after: 0,
    };
    for (i, sc) in scenarios.iter().enumerate() {
        check_scenario(sc, seed ^ (i as u64 + 1), &mut totals);
    }
    println!(
        "crash images: TOTAL {} images ({} recovered the new record, {} the previous), {} life-after-recovery appends",
        totals.images, totals.new_recovered, totals.prev_recovered, totals.life_after
    );
    assert!(totals.images >= 3000);
}
