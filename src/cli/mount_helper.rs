//! `mount -t fuse.kmsfs` and `/etc/fstab`: mount(8) runs
//! `/sbin/mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-sfnv] [-o OPTIONS]`, a link
//! to the kmsfs binary, which turns that into `kmsfs [GLOBALS] mount
//! CIPHERDIR MOUNTPOINT [FLAGS]` here. Pure, so every option is tested.

use std::ffi::OsString;

/// What the helper was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Helper {
    /// The kmsfs command line to run.
    Run(Vec<OsString>),
    /// `-f` (fake): do everything but the mount, which here is nothing.
    Fake,
}

/// Whether the binary was started as the mount helper.
pub fn is_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    name == "mount.fuse.kmsfs" || name == "mount.kmsfs"
}

/// Options of fstab and mount(8) that are not for the filesystem: mount
/// and systemd act on them before the helper runs.
fn is_mount_meta(o: &str) -> bool {
    matches!(
        o,
        "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "_netdev"
            | "rw"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
}

/// Translates the helper's arguments (without argv[0]).
pub fn translate(args: &[OsString]) -> Result<Helper, String> {
    let mut positional = vec![];
    let mut options: Vec<String> = vec![];
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let v = it.next().ok_or("-o needs a list of options")?;
                options.extend(v.to_string_lossy().split(',').map(String::from));
            }
            "-t" => {
                it.next().ok_or("-t needs a type")?;
            }
            "-N" => {
                return Err(
                    "mount namespaces (-N) are not supported by kmsfs's mount helper".into(),
                );
            }
            f if f.starts_with('-')
                && f.len() > 1
                && f[1..].chars().all(|c| "sfnvw".contains(c)) =>
            {
                fake |= f.contains('f');
            }
            f if f.starts_with("-o") && f.len() > 2 => {
                options.extend(f[2..].split(',').map(String::from));
            }
            f if f.starts_with('-') => return Err(format!("unknown mount helper flag {f}")),
            _ => positional.push(a.clone()),
        }
    }
    let [cipherdir, mountpoint] = <[OsString; 2]>::try_from(positional)
        .map_err(|p| format!("expected CIPHERDIR MOUNTPOINT, got {} argument(s)", p.len()))?;
    let mut globals: Vec<OsString> = vec![];
    let mut flags: Vec<OsString> = vec![];
    let mut kernel: Vec<String> = vec![];
    for o in options.iter().filter(|o| !o.is_empty()) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        let value = || {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| format!("the mount option {k} needs a value ({k}=...)"))
        };
        match k {
            "passfile" | "passphrase_file" => {
                globals.extend(["--passphrase-file".into(), value()?.into()])
            }
            "keyfile" | "key_file" => globals.extend(["--key-file".into(), value()?.into()]),
            "kms_home" => globals.extend(["--kms-home".into(), value()?.into()]),
            "audit_max_size" => globals.extend(["--audit-max-size".into(), value()?.into()]),
            "audit_max_age" => globals.extend(["--audit-max-age".into(), value()?.into()]),
            "log_file" => flags.extend(["--log-file".into(), value()?.into()]),
            "threads" => flags.extend(["--threads".into(), value()?.into()]),
            "idle" => flags.extend(["--idle".into(), value()?.into()]),
            "io_uring" => flags.extend(["--io-uring".into(), value()?.into()]),
            "audit_syslog" => globals.push("--audit-syslog".into()),
            "allow_other" => flags.push("--allow-other".into()),
            "xattrs" => flags.push("--xattrs".into()),
            "shared_cipherdir" => flags.push("--shared-cipherdir".into()),
            "no_writeback_cache" => flags.push("--no-writeback-cache".into()),
            "no_prefetch" => flags.push("--no-prefetch".into()),
            _ if is_mount_meta(o) => {}
            _ => kernel.push(o.clone()),
        }
    }
    if fake {
        return Ok(Helper::Fake);
    }
    let mut out = globals;
    out.extend(["mount".into(), cipherdir, mountpoint]);
    out.extend(flags);
    if !kernel.is_empty() {
        out.extend(["-o".into(), kernel.join(",").into()]);
    }
    Ok(Helper::Run(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Helper, String> {
        translate(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> Vec<String> {
        match t(args).unwrap() {
            Helper::Run(v) => v.into_iter().map(|s| s.into_string().unwrap()).collect(),
            Helper::Fake => panic!("fake"),
        }
    }

    #[test]
    fn an_fstab_line_becomes_a_kmsfs_mount() {
        assert_eq!(
            run(&[
                "/data/cipher",
                "/mnt/plain",
                "-o",
                "rw,defaults,allow_other,passfile=/etc/kmsfs/pass,noauto,x-systemd.automount,noatime,idle=10m,_netdev,comment=x"
            ]),
            [
                "--passphrase-file",
                "/etc/kmsfs/pass",
                "mount",
                "/data/cipher",
                "/mnt/plain",
                "--allow-other",
                "--idle",
                "10m",
                "-o",
                "noatime"
            ]
        );
    }

    #[test]
    fn every_kmsfs_option_maps_to_its_flag() {
        assert_eq!(
            run(&[
                "c",
                "m",
                "-n",
                "-t",
                "fuse.kmsfs",
                "-okeyfile=/k,kms_home=/h,audit_max_size=1M,audit_max_age=1d",
                "-o",
                "log_file=/l,threads=4,io_uring=off,xattrs,shared_cipherdir,no_writeback_cache,no_prefetch,ro"
            ]),
            [
                "--key-file",
                "/k",
                "--kms-home",
                "/h",
                "--audit-max-size",
                "1M",
                "--audit-max-age",
                "1d",
                "mount",
                "c",
                "m",
                "--log-file",
                "/l",
                "--threads",
                "4",
                "--io-uring",
                "off",
                "--xattrs",
                "--shared-cipherdir",
                "--no-writeback-cache",
                "--no-prefetch",
                "-o",
                "ro"
            ]
        );
    }

    #[test]
    fn mistakes_are_named_and_fake_mounts_do_nothing() {
        assert_eq!(t(&["c", "m", "-f", "-o", "allow_other"]), Ok(Helper::Fake));
        assert_eq!(t(&["c", "m", "-sfv"]), Ok(Helper::Fake));
        assert_eq!(
            t(&["c"]).unwrap_err(),
            "expected CIPHERDIR MOUNTPOINT, got 1 argument(s)"
        );
        assert_eq!(
            t(&["c", "m", "-o", "passfile="]).unwrap_err(),
            "the mount option passfile needs a value (passfile=...)"
        );
        assert_eq!(
            t(&["c", "m", "-o"]).unwrap_err(),
            "-o needs a list of options"
        );
        assert_eq!(
            t(&["c", "m", "--bogus"]).unwrap_err(),
            "unknown mount helper flag --bogus"
        );
        assert!(
            t(&["c", "m", "-N", "1"])
                .unwrap_err()
                .contains("not supported")
        );
        assert!(is_helper(std::ffi::OsStr::new("/sbin/mount.fuse.kmsfs")));
        assert!(is_helper(std::ffi::OsStr::new("mount.kmsfs")));
        assert!(!is_helper(std::ffi::OsStr::new("/usr/local/bin/kmsfs")));
    }
}
