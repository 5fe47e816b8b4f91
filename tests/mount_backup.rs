//! Backup tools through the mount: tar and rsync reproduce the plaintext tree
//! byte for byte, and rsync restores it into the mount.

mod common;
use common::*;
use std::fs;

fn tree_hashes(root: &std::path::Path) -> String {
    sh_ok(&format!(
        "cd {} && find . -type f -print0 | sort -z | xargs -0 sha256sum",
        root.display()
    ))
}

fn tar_and_rsync_round_trip_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    let _m = fx.mount();
    // A source tree: many small files, some large and sparse ones, links, modes.
    let src = fx.dir.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    let mut rng = Rng(99);
    for i in 0..200 {
        let n = rng.below(20_000) as usize;
        let data = rng.bytes(n);
        fs::write(src.join(format!("a/f{i}")), data).unwrap();
    }
    fs::write(src.join("a/b/big"), Rng(5).bytes(3_000_000)).unwrap();
    sh_ok(&format!(
        "truncate -s 50M {}/a/b/sparse && printf end >> {}/a/b/sparse",
        src.display(),
        src.display()
    ));
    std::os::unix::fs::symlink("b/big", src.join("a/ln")).unwrap();
    sh_ok(&format!(
        "chmod 600 {}/a/f1 && chmod 755 {}/a/b",
        src.display(),
        src.display()
    ));
    let want = tree_hashes(&src);

    // rsync -a into the mount, and back out.
    sh_ok(&format!(
        "rsync -a {}/ {}/data/",
        src.display(),
        fx.mnt.display()
    ));
    assert_eq!(tree_hashes(&fx.m("data")), want, "rsync into the mount");
    let out = fx.dir.path().join("rsync-out");
    sh_ok(&format!(
        "rsync -a {}/data/ {}/",
        fx.mnt.display(),
        out.display()
    ));
    assert_eq!(tree_hashes(&out), want, "rsync out of the mount");
    assert_eq!(
        fs::read_link(out.join("a/ln")).unwrap().to_str().unwrap(),
        "b/big"
    );
    let modes = sh_ok(&format!(
        "stat -c '%a %n' {}/a/f1 {}/a/b",
        out.display(),
        out.display()
    ));
    assert!(modes.contains("600 ") && modes.contains("755 "), "{modes}");

    // tar c of the mount, extracted elsewhere.
    let tarball = fx.dir.path().join("backup.tar");
    sh_ok(&format!(
        "tar -C {} -cf {} data",
        fx.mnt.display(),
        tarball.display()
    ));
    let x = fx.dir.path().join("tar-out");
    fs::create_dir(&x).unwrap();
    sh_ok(&format!("tar -C {} -xf {}", x.display(), tarball.display()));
    assert_eq!(tree_hashes(&x.join("data")), want, "tar of the mount");

    // Restore: rsync the backup back into a fresh place in the mount, keeping
    // holes (-S seeks over runs of zeros instead of writing them).
    sh_ok(&format!(
        "rsync -aS {}/ {}/restored/",
        out.display(),
        fx.mnt.display()
    ));
    assert_eq!(
        tree_hashes(&fx.m("restored")),
        want,
        "rsync restore into the mount"
    );
    // Holes stay holes in the cipherdir.
    let used = sh_ok(&format!(
        "du -k {} | cut -f1",
        fx.c("restored/a/b/sparse").display()
    ));
    assert!(
        used.trim().parse::<u64>().unwrap() < 10_000,
        "sparse file uses {used} KiB"
    );
    // No name of the backed-up tree is in the cipherdir.
    let mut names: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
    names.extend(["data", "restored", "a", "b", "big", "sparse", "ln"].map(String::from));
    fx.assert_names_hidden(&names);
}

#[test]
fn tar_and_rsync_round_trip_with_encrypted_names() {
    tar_and_rsync_round_trip_in(common::NAME_MODES[0]);
}

#[test]
fn tar_and_rsync_round_trip_with_plaintext_names() {
    tar_and_rsync_round_trip_in(common::NAME_MODES[1]);
}
