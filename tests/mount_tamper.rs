//! Tampering with the cipherdir, unmounted or behind a live mount: every
//! altered file fails with EIO (and an audit record), never with wrong or
//! stale plaintext; every other file keeps working.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::FileExt;

const H: u64 = 512;
const DISK_BLOCK: u64 = 4096 + 28;

fn content(i: u8) -> Vec<u8> {
    (0..10_000u32)
        .map(|j| (j as u8).wrapping_mul(i).wrapping_add(i))
        .collect()
}

fn populate(fx: &Fixture) {
    let m = fx.mount();
    fs::create_dir(fx.m("dir")).unwrap();
    for i in 1..=9u8 {
        fs::write(fx.m(&format!("f{i}")), content(i)).unwrap();
    }
    fs::write(fx.m("dir/inner"), content(42)).unwrap();
    m.unmount();
}

fn moved_renamed_swapped_copied_and_flipped_files_give_eio_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    populate(&fx);
    // move into another directory, rename in place, swap two, copy one over another
    fs::rename(fx.c("f1"), fx.c("dir/f1")).unwrap();
    fs::rename(fx.c("f2"), fx.c("renamed")).unwrap();
    fs::rename(fx.c("f3"), fx.c("tmp")).unwrap();
    fs::rename(fx.c("f4"), fx.c("f3")).unwrap();
    fs::rename(fx.c("tmp"), fx.c("f4")).unwrap();
    fs::copy(fx.c("f5"), fx.c("f6")).unwrap();
    // a header from one file on another's blocks
    let h7 = fs::read(fx.c("f5")).unwrap();
    let mut f8 = fs::read(fx.c("f8")).unwrap();
    f8[..H as usize].copy_from_slice(&h7[..H as usize]);
    fs::write(fx.c("f8"), f8).unwrap();
    // flip a byte inside block 1 of f9; truncate dir/inner mid-block
    let f = fs::OpenOptions::new().write(true).open(fx.c("f9")).unwrap();
    f.write_all_at(&[0x55], H + DISK_BLOCK + 100).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.c("dir/inner"))
        .unwrap()
        .set_len(H + DISK_BLOCK + 10)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.c("f7"))
        .unwrap()
        .set_len(H + DISK_BLOCK + 100)
        .unwrap();

    let _m = fx.mount();
    for p in ["dir/f1", "renamed", "f3", "f4", "f6", "f8"] {
        assert_eq!(
            read_err(&fx.m(p)),
            Some(libc::EIO),
            "{p} must fail with EIO"
        );
    }
    // f9: block 0 still reads; the flipped block fails.
    let f9 = fs::File::open(fx.m("f9")).unwrap();
    let mut buf = vec![0u8; 4096];
    f9.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, content(9)[..4096]);
    assert_eq!(
        f9.read_exact_at(&mut buf, 4096).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    // A truncated file: size follows the ciphertext, the torn block fails.
    assert_eq!(read_err(&fx.m("dir/inner")), Some(libc::EIO));
    assert_eq!(read_err(&fx.m("f7")), Some(libc::EIO));
    // Untouched files still work.
    assert_eq!(fs::read(fx.m("f5")).unwrap(), content(5));
    // Failures are audited with the path that was tried.
    let recs = fx.audit();
    let failed: Vec<&str> = recs
        .iter()
        .filter(|r| r["eventName"] == "Decrypt" && r["errorCode"] == "InvalidCiphertextException")
        .filter_map(|r| r["requestParameters"]["encryptionContext"]["kmsfs:path"].as_str())
        .collect();
    for p in ["dir/f1", "renamed", "f3", "f4", "f6"] {
        assert!(
            failed.contains(&p),
            "no failed Decrypt audited for {p}: {failed:?}"
        );
    }
}

fn corrupt_headers_and_foreign_files_give_eio_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    populate(&fx);
    let other = Fixture::new();
    populate(&other);
    // header: bad magic, both slots torn, a file too short for its header
    let f = fs::OpenOptions::new().write(true).open(fx.c("f1")).unwrap();
    f.write_all_at(b"XX", 0).unwrap();
    let f = fs::OpenOptions::new().write(true).open(fx.c("f2")).unwrap();
    f.write_all_at(&[0xAA; 8], 40).unwrap();
    f.write_all_at(&[0xAA; 8], 40 + 240).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.c("f3"))
        .unwrap()
        .set_len(100)
        .unwrap();
    // a ciphertext from another kmsfs filesystem (other KMS, other fs id)
    fs::copy(other.c("f4"), fx.c("f4")).unwrap();
    // random garbage where a file was
    fs::write(fx.c("f5"), vec![0x13u8; 7000]).unwrap();

    let _m = fx.mount();
    for p in ["f1", "f2", "f4", "f5"] {
        assert_eq!(read_err(&fx.m(p)), Some(libc::EIO), "{p}");
    }
    // Too short for a header: size 0, and opening fails with EIO.
    assert_eq!(fs::metadata(fx.m("f3")).unwrap().len(), 0);
    assert_eq!(read_err(&fx.m("f3")), Some(libc::EIO));
    for i in 6..=9u8 {
        assert_eq!(fs::read(fx.m(&format!("f{i}"))).unwrap(), content(i));
    }
    assert_eq!(fs::read(fx.m("dir/inner")).unwrap(), content(42));
}

fn one_slot_torn_still_opens_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    populate(&fx);
    {
        let m = fx.mount();
        fs::rename(fx.m("f1"), fx.m("g1")).unwrap();
        m.unmount();
    }
    // The rename emptied the old slot; tear the current one's padding area
    // in the other slot region: nothing to fall back to, so EIO...
    let raw = fs::read(fx.c("g1")).unwrap();
    let slot_a_seq = u64::from_be_bytes(raw[32..40].try_into().unwrap());
    let slot_b_seq = u64::from_be_bytes(raw[272..280].try_into().unwrap());
    assert!(
        slot_a_seq == 0 || slot_b_seq == 0,
        "the old slot is emptied after a rename"
    );
    // ...but tearing the empty slot changes nothing.
    let empty = if slot_a_seq == 0 { 32 } else { 272 };
    let f = fs::OpenOptions::new().write(true).open(fx.c("g1")).unwrap();
    f.write_all_at(&[1, 2, 3], empty + 50).unwrap();
    let _m = fx.mount();
    assert_eq!(fs::read(fx.m("g1")).unwrap(), content(1));
}

/// The mount lets the kernel keep a file's cached plaintext across opens
/// while the backing file is unchanged. A change behind the mount's back,
/// even one that restores the mtime, must end that: the next open reads and
/// authenticates the ciphertext again.
fn tampering_behind_a_live_mount_is_not_hidden_by_the_page_cache_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    let _m = fx.mount();
    fs::write(fx.m("a"), content(1)).unwrap();
    fs::write(fx.m("b"), content(2)).unwrap();
    // Two reads: the second open may be served from the kernel's cache.
    assert_eq!(fs::read(fx.m("a")).unwrap(), content(1));
    assert_eq!(fs::read(fx.m("a")).unwrap(), content(1));
    let before = fs::metadata(fx.c("a")).unwrap().modified().unwrap();
    // Writes one ciphertext byte behind the mount, mtime put back; returns
    // the byte it replaced.
    let put = |b: Option<u8>| -> u8 {
        let raw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.c("a"))
            .unwrap();
        let mut old = [0u8; 1];
        raw.read_exact_at(&mut old, H + 100).unwrap();
        raw.write_all_at(&[b.unwrap_or(old[0] ^ 1)], H + 100)
            .unwrap();
        raw.set_modified(before).unwrap();
        old[0]
    };
    let byte = put(None);
    assert_eq!(read_err(&fx.m("a")), Some(libc::EIO));
    // Putting the original byte back (mtime again restored) makes it readable.
    put(Some(byte));
    assert_eq!(fs::read(fx.m("a")).unwrap(), content(1));
    assert_eq!(fs::read(fx.m("b")).unwrap(), content(2));
}

#[test]
fn moved_renamed_swapped_copied_and_flipped_files_give_eio_with_encrypted_names() {
    moved_renamed_swapped_copied_and_flipped_files_give_eio_in(common::NAME_MODES[0]);
}

#[test]
fn moved_renamed_swapped_copied_and_flipped_files_give_eio_with_plaintext_names() {
    moved_renamed_swapped_copied_and_flipped_files_give_eio_in(common::NAME_MODES[1]);
}

#[test]
fn corrupt_headers_and_foreign_files_give_eio_with_encrypted_names() {
    corrupt_headers_and_foreign_files_give_eio_in(common::NAME_MODES[0]);
}

#[test]
fn corrupt_headers_and_foreign_files_give_eio_with_plaintext_names() {
    corrupt_headers_and_foreign_files_give_eio_in(common::NAME_MODES[1]);
}

#[test]
fn one_slot_torn_still_opens_with_encrypted_names() {
    one_slot_torn_still_opens_in(common::NAME_MODES[0]);
}

#[test]
fn one_slot_torn_still_opens_with_plaintext_names() {
    one_slot_torn_still_opens_in(common::NAME_MODES[1]);
}

#[test]
fn tampering_behind_a_live_mount_is_not_hidden_by_the_page_cache_with_encrypted_names() {
    tampering_behind_a_live_mount_is_not_hidden_by_the_page_cache_in(common::NAME_MODES[0]);
}

#[test]
fn tampering_behind_a_live_mount_is_not_hidden_by_the_page_cache_with_plaintext_names() {
    tampering_behind_a_live_mount_is_not_hidden_by_the_page_cache_in(common::NAME_MODES[1]);
}
