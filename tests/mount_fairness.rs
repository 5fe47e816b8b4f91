//! One user of a shared mount cannot starve the others: of descriptors, of
//! renames, or of the group a set-group-id directory gives its files.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Instant;

const MALLORY: &str = "kmsfs-mallory";
const TRENT: &str = "kmsfs-trent";

fn users() {
    ensure_users(&["kmsfs-proj"], &[(MALLORY, &["kmsfs-proj"]), (TRENT, &[])]);
}

fn shared(fx: &Fixture) {
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

/// A mount whose daemon starts with an open-file limit of 512: each user's
/// share is (512 - 128) / 4 = 96 handles.
fn mount_with_limit(fx: &Fixture) -> Mounted<'_> {
    let mut c = Command::new("prlimit");
    c.arg("--nofile=512:512").arg("--").arg(BIN);
    c.arg("--kms-home")
        .arg(&fx.home)
        .arg("--key-file")
        .arg(&fx.key);
    c.args([
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
        "--allow-other",
    ]);
    let o = run_timeout(&mut c, 60);
    assert!(
        o.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fx.mounted_in_background()
}

#[test]
fn one_user_holding_files_open_gets_emfile_alone() {
    users();
    let fx = Fixture::new();
    shared(&fx);
    let _m = mount_with_limit(&fx);
    fs::set_permissions(&fx.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(fx.m("f"), b"x").unwrap();
    fs::set_permissions(fx.m("f"), fs::Permissions::from_mode(0o644)).unwrap();
    // Mallory holds as many handles as she can get, then stays.
    let hold = format!(
        "import sys, errno, time\nfs = []\ntry:\n    while len(fs) < 1000:\n        fs.append(open('{}', 'rb'))\nexcept OSError as e:\n    print(len(fs), errno.errorcode[e.errno], flush=True)\ntime.sleep(5)\n",
        fx.m("f").display()
    );
    let mut mallory = Command::new("runuser")
        .args(["-u", MALLORY, "--", "python3", "-c", &hold])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mallory.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let (got, err) = line.trim().split_once(' ').unwrap();
    assert_eq!(err, "EMFILE", "{line}");
    assert_eq!(
        got.parse::<u32>().unwrap(),
        96,
        "her share: (512 - 128) / 4"
    );
    // While she holds them: trent and root still open, create and list.
    let o = as_user_output(
        TRENT,
        &format!(
            "cat {m}/f && echo t > {m}/by-trent && ls {m} >/dev/null",
            m = fx.mnt.display()
        ),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"x");
    let _ = mallory.wait();
    // Her share comes back when she closes them.
    let o = as_user_output(MALLORY, &format!("cat {}/f", fx.mnt.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_rename_of_more_files_than_the_daemon_has_descriptors_works_beside_another_users_rename() {
    users();
    let fx = Fixture::new();
    shared(&fx);
    let _m = mount_with_limit(&fx);
    fs::set_permissions(&fx.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    // More files than the daemon has descriptors: a rename that held one
    // per file would fail.
    let n = 1100;
    let o = as_user_output(
        MALLORY,
        &format!(
            "set -e; mkdir {m}/big; cd {m}/big; i=0; while [ $i -lt {n} ]; do echo $i > f$i; i=$((i+1)); done",
            m = fx.mnt.display()
        ),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Trent works in his own directory: the kernel serialises renames in one
    // directory by itself; kmsfs must not add a wait across directories
    // (which renames wait for which is unit-tested in fairness.rs).
    let o = as_user_output(
        TRENT,
        &format!("mkdir {m}/t && echo t > {m}/t/trents", m = fx.mnt.display()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = Instant::now();
    let mut big = Command::new("runuser")
        .args(["-u", MALLORY, "--", "mv"])
        .arg(fx.m("big"))
        .arg(fx.m("moved"))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t1 = Instant::now();
    let o = as_user_output(
        TRENT,
        &format!("mv {m}/t/trents {m}/t/trents2", m = fx.mnt.display()),
    );
    let trent_took = t1.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status = big.wait().unwrap();
    let big_took = t0.elapsed();
    assert!(status.success(), "mv of {n} files failed");
    eprintln!("rename of {n} files: {big_took:?}; another user's rename meanwhile: {trent_took:?}");
    for i in [0, n / 2, n - 1] {
        assert_eq!(
            fs::read_to_string(fx.m(&format!("moved/f{i}"))).unwrap(),
            format!("{i}\n")
        );
    }
    assert_eq!(fs::read(fx.m("t/trents2")).unwrap(), b"t\n");
}

#[test]
fn files_in_a_set_group_id_directory_get_its_group_and_the_requested_mode() {
    users();
    let fx = Fixture::new();
    shared(&fx);
    let _m = fx.mount_with(&["--allow-other"]);
    fs::set_permissions(&fx.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let plain = tempfile::tempdir().unwrap();
    fs::set_permissions(plain.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The same steps in a plain directory and through the mount.
    let run = |base: &std::path::Path| {
        sh_ok(&format!(
            "mkdir {b}/proj && chgrp kmsfs-proj {b}/proj && chmod 2771 {b}/proj",
            b = base.display()
        ));
        let o = as_user_output(
            MALLORY,
            &format!(
                "umask 007; cd {b}/proj && echo x > f && mkdir d && mkfifo p && ln -s f l && stat -c '%n %a %G' f d p && stat -c '%n %G' l",
                b = base.display()
            ),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let native = run(plain.path());
    let mounted = run(&fx.mnt);
    assert_eq!(mounted, native);
    assert!(native.contains("f 660 kmsfs-proj"), "{native}");
    assert!(native.contains("d 2770 kmsfs-proj"), "{native}");
    // Requested modes are not cut by the daemon's own umask.
    let o = as_user_output(
        MALLORY,
        &format!(
            "umask 0; cd {}/proj && python3 -c \"import os; os.close(os.open('m', os.O_CREAT|os.O_WRONLY, 0o620)); os.mkdir('md', 0o777)\" && stat -c '%a' m md",
            fx.mnt.display()
        ),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "620\n2777\n");
    assert_eq!(
        fs::metadata(fx.m("proj/f")).unwrap().uid(),
        sh_ok("id -u kmsfs-mallory").trim().parse::<u32>().unwrap()
    );
}
