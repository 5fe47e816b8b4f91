//! The KMS service through its library API: every operation, the key-state
//! cells that matter, time-driven behaviour (with a manual clock), persistence
//! across instances, concurrency and the fail-closed audit log.

use kmsfs::crypto::Key256;
use kmsfs::kms::blob;
use kmsfs::kms::clock::{DAY, ManualClock};
use kmsfs::kms::import::wrap_for_import;
use kmsfs::kms::keystore::{KmsHome, RootSecret};
use kmsfs::kms::{
    Caller, CreateKeyRequest, DataKeySpec, EncryptionContext, ErrorCode, Kms, Options, Via,
};
use std::sync::Arc;

const T0: i64 = 1_800_000_000;

fn cli() -> Caller {
    Caller::this_process(Via::Cli)
}

fn mount() -> Caller {
    Caller::this_process(Via::Mount)
}

fn kms_with_clock() -> (Kms, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let kms = Kms::in_memory_with(Options {
        clock: clock.clone(),
        ..Options::default()
    });
    (kms, clock)
}

fn new_key(kms: &Kms) -> String {
    kms.create_key(
        &cli(),
        CreateKeyRequest {
            description: "t".into(),
            ..Default::default()
        },
    )
    .unwrap()
    .key_id
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    EncryptionContext::from_pairs(pairs.iter().copied())
}

fn code<T: std::fmt::Debug>(r: Result<T, kmsfs::kms::KmsError>) -> ErrorCode {
    r.expect_err("expected an error").code
}

#[test]
fn encrypt_decrypt_round_trip_with_context() {
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    let c = ctx(&[("purpose", "test"), ("team", "ops")]);
    let e = kms.encrypt(&cli(), &k, b"hello", &c, None).unwrap();
    assert!(e.key_arn.ends_with(&k));
    let reordered = ctx(&[("team", "ops"), ("purpose", "test")]);
    let d = kms
        .decrypt(&cli(), &e.ciphertext_blob, &reordered, None, None)
        .unwrap();
    assert_eq!(d.plaintext.as_bytes(), b"hello");
    assert_eq!(d.key_arn, e.key_arn);
    // Missing, partial, case-changed and extra context all fail.
    for bad in [
        ctx(&[]),
        ctx(&[("purpose", "test")]),
        ctx(&[("Purpose", "test"), ("team", "ops")]),
        ctx(&[("purpose", "test"), ("team", "ops"), ("x", "")]),
    ] {
        assert_eq!(
            code(kms.decrypt(&cli(), &e.ciphertext_blob, &bad, None, None)),
            ErrorCode::InvalidCiphertextException
        );
    }
    // A flipped bit anywhere fails.
    for i in [0, 2, 20, 30, 45, 60, e.ciphertext_blob.len() - 1] {
        let mut b = e.ciphertext_blob.clone();
        b[i] ^= 0x40;
        let err = kms.decrypt(&cli(), &b, &c, None, None).unwrap_err();
        assert!(
            matches!(
                err.code,
                ErrorCode::InvalidCiphertextException | ErrorCode::NotFoundException
            ),
            "{i}: {err}"
        );
    }
    assert_eq!(
        code(kms.decrypt(&cli(), b"garbage", &c, None, None)),
        ErrorCode::InvalidCiphertextException
    );
}

#[test]
fn key_references_and_incorrect_key() {
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    let other = new_key(&kms);
    kms.create_alias(&cli(), "alias/app", &k).unwrap();
    let arn = kms.describe_key(&cli(), &k).unwrap().arn;
    let alias_arn = format!("arn:kmsfs:kms:local:{}:alias/app", kms.account());
    for r in [k.as_str(), arn.as_str(), "alias/app", alias_arn.as_str()] {
        let e = kms.encrypt(&cli(), r, b"x", &ctx(&[]), None).unwrap();
        kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), Some(r), None)
            .unwrap();
        assert_eq!(
            code(kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), Some(&other), None)),
            ErrorCode::IncorrectKeyException
        );
    }
    assert_eq!(
        code(kms.describe_key(&cli(), "alias/nope")),
        ErrorCode::NotFoundException
    );
    assert_eq!(
        code(kms.describe_key(&cli(), "00000000-0000-4000-8000-000000000000")),
        ErrorCode::NotFoundException
    );
    assert_eq!(
        code(kms.describe_key(&cli(), "arn:aws:kms:us-east-1:1:key/x")),
        ErrorCode::InvalidArnException
    );
}

#[test]
fn size_limits_and_validation() {
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    assert_eq!(
        code(kms.encrypt(&cli(), &k, &[0; 4097], &ctx(&[]), None)),
        ErrorCode::ValidationException
    );
    assert_eq!(
        code(kms.encrypt(&cli(), &k, &[], &ctx(&[]), None)),
        ErrorCode::ValidationException
    );
    kms.encrypt(&cli(), &k, &[1; 4096], &ctx(&[]), None)
        .unwrap();
    assert_eq!(
        code(kms.encrypt(&cli(), &k, b"x", &ctx(&[]), Some("RSAES_OAEP_SHA_256"))),
        ErrorCode::InvalidKeyUsageException
    );
    let big = "v".repeat(9000);
    assert_eq!(
        code(kms.encrypt(&cli(), &k, b"x", &ctx(&[("k", &big)]), None)),
        ErrorCode::ValidationException
    );
    assert_eq!(
        code(kms.generate_random(&cli(), 0)),
        ErrorCode::ValidationException
    );
    assert_eq!(
        code(kms.generate_random(&cli(), 1025)),
        ErrorCode::ValidationException
    );
    assert_eq!(kms.generate_random(&cli(), 1024).unwrap().len(), 1024);
    let bad = CreateKeyRequest {
        key_usage: Some("SIGN_VERIFY".into()),
        ..Default::default()
    };
    assert_eq!(
        code(kms.create_key(&cli(), bad)),
        ErrorCode::ValidationException
    );
    let bad = CreateKeyRequest {
        description: "d".repeat(8193),
        ..Default::default()
    };
    assert_eq!(
        code(kms.create_key(&cli(), bad)),
        ErrorCode::ValidationException
    );
}

#[test]
fn generate_data_key_variants() {
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    let c = ctx(&[("kmsfs:path", "a/b.txt")]);
    let spec = |s: Option<&str>, n: Option<u32>| DataKeySpec {
        key_spec: s.map(String::from),
        number_of_bytes: n,
    };
    for (s, want) in [
        (spec(Some("AES_256"), None), 32),
        (spec(Some("AES_128"), None), 16),
        (spec(None, Some(7)), 7),
    ] {
        let dk = kms.generate_data_key(&cli(), &k, &s, &c, true).unwrap();
        let pt = dk.plaintext.unwrap();
        assert_eq!(pt.len(), want);
        let d = kms
            .decrypt(&cli(), &dk.ciphertext_blob, &c, None, None)
            .unwrap();
        assert_eq!(d.plaintext.as_bytes(), pt.as_bytes());
    }
    for bad in [
        spec(None, None),
        spec(Some("AES_256"), Some(32)),
        spec(Some("AES_512"), None),
        spec(None, Some(1025)),
    ] {
        assert_eq!(
            code(kms.generate_data_key(&cli(), &k, &bad, &c, true)),
            ErrorCode::ValidationException
        );
    }
    let wo = kms
        .generate_data_key(&cli(), &k, &DataKeySpec::aes_256(), &c, false)
        .unwrap();
    assert!(wo.plaintext.is_none());
    assert_eq!(
        kms.decrypt(&cli(), &wo.ciphertext_blob, &c, None, None)
            .unwrap()
            .plaintext
            .len(),
        32
    );
}

#[test]
fn re_encrypt_moves_between_keys_and_contexts() {
    let kms = Kms::in_memory();
    let a = new_key(&kms);
    let b = new_key(&kms);
    let c1 = ctx(&[("kmsfs:path", "old")]);
    let c2 = ctx(&[("kmsfs:path", "new")]);
    let e = kms.encrypt(&cli(), &a, b"payload", &c1, None).unwrap();
    let r = kms
        .re_encrypt(&cli(), &e.ciphertext_blob, &c1, None, &b, &c2)
        .unwrap();
    assert!(r.source_key_arn.ends_with(&a) && r.key_arn.ends_with(&b));
    assert_eq!(
        kms.decrypt(&cli(), &r.ciphertext_blob, &c2, None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"payload"
    );
    assert_eq!(
        code(kms.decrypt(&cli(), &r.ciphertext_blob, &c1, None, None)),
        ErrorCode::InvalidCiphertextException
    );
    assert_eq!(
        code(kms.re_encrypt(&cli(), &e.ciphertext_blob, &c2, None, &b, &c2)),
        ErrorCode::InvalidCiphertextException
    );
    assert_eq!(
        code(kms.re_encrypt(&cli(), &e.ciphertext_blob, &c1, Some(&b), &b, &c2)),
        ErrorCode::IncorrectKeyException
    );
    kms.disable_key(&cli(), &b).unwrap();
    assert_eq!(
        code(kms.re_encrypt(&cli(), &e.ciphertext_blob, &c1, None, &b, &c2)),
        ErrorCode::DisabledException
    );
}

#[test]
fn disable_enable_and_state_errors() {
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    let e = kms.encrypt(&cli(), &k, b"x", &ctx(&[]), None).unwrap();
    kms.disable_key(&cli(), &k).unwrap();
    assert_eq!(kms.describe_key(&cli(), &k).unwrap().key_state, "Disabled");
    assert_eq!(
        code(kms.encrypt(&cli(), &k, b"x", &ctx(&[]), None)),
        ErrorCode::DisabledException
    );
    assert_eq!(
        code(kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)),
        ErrorCode::DisabledException
    );
    assert_eq!(
        code(kms.generate_data_key(&cli(), &k, &DataKeySpec::aes_256(), &ctx(&[]), true)),
        ErrorCode::DisabledException
    );
    assert_eq!(
        code(kms.enable_key_rotation(&cli(), &k, None)),
        ErrorCode::DisabledException
    );
    kms.enable_key(&cli(), &k).unwrap();
    kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)
        .unwrap();
}

#[test]
fn scheduled_deletion_cancel_and_expiry() {
    let (kms, clock) = kms_with_clock();
    let k = new_key(&kms);
    kms.create_alias(&cli(), "alias/doomed", &k).unwrap();
    let e = kms.encrypt(&cli(), &k, b"x", &ctx(&[]), None).unwrap();
    assert_eq!(
        code(kms.schedule_key_deletion(&cli(), &k, Some(6))),
        ErrorCode::ValidationException
    );
    assert_eq!(
        code(kms.schedule_key_deletion(&cli(), &k, Some(31))),
        ErrorCode::ValidationException
    );
    let r = kms.schedule_key_deletion(&cli(), &k, None).unwrap();
    assert_eq!(r["PendingWindowInDays"], 30);
    assert_eq!(r["KeyState"], "PendingDeletion");
    let m = kms.describe_key(&cli(), &k).unwrap();
    assert_eq!(m.key_state, "PendingDeletion");
    assert!(m.deletion_date.is_some());
    assert_eq!(
        code(kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)),
        ErrorCode::KMSInvalidStateException
    );
    assert_eq!(
        code(kms.encrypt(&cli(), &k, b"x", &ctx(&[]), None)),
        ErrorCode::KMSInvalidStateException
    );
    assert_eq!(
        code(kms.enable_key(&cli(), &k)),
        ErrorCode::KMSInvalidStateException
    );
    assert_eq!(
        code(kms.schedule_key_deletion(&cli(), &k, None)),
        ErrorCode::KMSInvalidStateException
    );
    assert_eq!(
        code(kms.tag_resource(&cli(), &k, &[("a".into(), "b".into())])),
        ErrorCode::KMSInvalidStateException
    );
    let other = new_key(&kms);
    assert_eq!(
        code(
            kms.update_alias(&cli(), "alias/doomed", &other)
                .and_then(|_| kms.create_alias(&cli(), "alias/x", &k))
        ),
        ErrorCode::KMSInvalidStateException
    );
    kms.update_alias(&cli(), "alias/doomed", &k).unwrap_err();
    kms.cancel_key_deletion(&cli(), &k).unwrap();
    assert_eq!(kms.describe_key(&cli(), &k).unwrap().key_state, "Disabled");
    assert_eq!(
        code(kms.cancel_key_deletion(&cli(), &k)),
        ErrorCode::KMSInvalidStateException
    );

    // Schedule again with 7 days; after 7 days the key and its material are gone.
    kms.update_alias(&cli(), "alias/doomed", &k).unwrap();
    kms.schedule_key_deletion(&cli(), &k, Some(7)).unwrap();
    clock.advance(7 * DAY - 1);
    assert_eq!(
        kms.describe_key(&cli(), &k).unwrap().key_state,
        "PendingDeletion"
    );
    clock.advance(1);
    assert_eq!(
        code(kms.describe_key(&cli(), &k)),
        ErrorCode::NotFoundException
    );
    assert_eq!(
        code(kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)),
        ErrorCode::NotFoundException
    );
    let aliases = kms.list_aliases(&cli(), None, None, None).unwrap();
    assert!(!aliases.to_string().contains("alias/doomed"), "{aliases}");
}

#[test]
fn rotation_on_demand_and_automatic() {
    let (kms, clock) = kms_with_clock();
    let k = new_key(&kms);
    let before = kms.encrypt(&cli(), &k, b"old", &ctx(&[]), None).unwrap();
    let st = kms.get_key_rotation_status(&cli(), &k).unwrap();
    assert_eq!(st["KeyRotationEnabled"], false);
    kms.rotate_key_on_demand(&cli(), &k).unwrap();
    let after = kms.encrypt(&cli(), &k, b"new", &ctx(&[]), None).unwrap();
    assert_eq!(
        blob::parse(&before.ciphertext_blob)
            .unwrap()
            .header
            .material_version,
        1
    );
    assert_eq!(
        blob::parse(&after.ciphertext_blob)
            .unwrap()
            .header
            .material_version,
        2
    );
    assert_eq!(
        kms.decrypt(&cli(), &before.ciphertext_blob, &ctx(&[]), None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"old"
    );
    assert_eq!(
        kms.decrypt(&cli(), &after.ciphertext_blob, &ctx(&[]), None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"new"
    );
    assert!(
        kms.get_key_rotation_status(&cli(), &k).unwrap()["OnDemandRotationStartDate"].is_string()
    );

    assert_eq!(
        code(kms.enable_key_rotation(&cli(), &k, Some(89))),
        ErrorCode::ValidationException
    );
    assert_eq!(
        code(kms.enable_key_rotation(&cli(), &k, Some(2561))),
        ErrorCode::ValidationException
    );
    kms.enable_key_rotation(&cli(), &k, Some(90)).unwrap();
    let st = kms.get_key_rotation_status(&cli(), &k).unwrap();
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 90);
    clock.advance(90 * DAY);
    let auto = kms.encrypt(&cli(), &k, b"auto", &ctx(&[]), None).unwrap();
    assert_eq!(
        blob::parse(&auto.ciphertext_blob)
            .unwrap()
            .header
            .material_version,
        3
    );
    let rot = kms.list_key_rotations(&cli(), &k, None, None).unwrap();
    let kinds: Vec<_> = rot["Rotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RotationType"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["ON_DEMAND", "AUTOMATIC"]);
    kms.decrypt(&cli(), &before.ciphertext_blob, &ctx(&[]), None, None)
        .unwrap();
    kms.disable_key_rotation(&cli(), &k).unwrap();
    assert_eq!(
        kms.get_key_rotation_status(&cli(), &k).unwrap()["KeyRotationEnabled"],
        false
    );

    for _ in 0..9 {
        kms.rotate_key_on_demand(&cli(), &k).unwrap();
    }
    assert_eq!(
        code(kms.rotate_key_on_demand(&cli(), &k)),
        ErrorCode::LimitExceededException
    );
}

#[test]
fn aliases_and_tags() {
    let kms = Kms::in_memory();
    let a = new_key(&kms);
    let b = new_key(&kms);
    kms.create_alias(&cli(), "alias/app", &a).unwrap();
    assert_eq!(
        code(kms.create_alias(&cli(), "alias/app", &b)),
        ErrorCode::AlreadyExistsException
    );
    for bad in ["app", "alias/aws/x", "alias/kmsfs/x", "alias/sp ace"] {
        assert_eq!(
            code(kms.create_alias(&cli(), bad, &b)),
            ErrorCode::InvalidAliasNameException,
            "{bad}"
        );
    }
    assert_eq!(
        code(kms.create_alias(&cli(), "alias/x", "alias/app")),
        ErrorCode::ValidationException
    );
    kms.create_alias(&cli(), "alias/other", &b).unwrap();
    let listed = kms.list_aliases(&cli(), Some(&a), None, None).unwrap();
    assert_eq!(listed["Aliases"].as_array().unwrap().len(), 1);
    kms.update_alias(&cli(), "alias/app", &b).unwrap();
    assert_eq!(kms.describe_key(&cli(), "alias/app").unwrap().key_id, b);
    kms.delete_alias(&cli(), "alias/app").unwrap();
    assert_eq!(
        code(kms.delete_alias(&cli(), "alias/app")),
        ErrorCode::NotFoundException
    );
    assert_eq!(
        code(kms.update_alias(&cli(), "alias/app", &a)),
        ErrorCode::NotFoundException
    );

    kms.tag_resource(
        &cli(),
        &a,
        &[("team".into(), "ops".into()), ("env".into(), "prod".into())],
    )
    .unwrap();
    kms.untag_resource(&cli(), &a, &["env".into()]).unwrap();
    let tags = kms.list_resource_tags(&cli(), &a, None, None).unwrap();
    assert_eq!(
        tags["Tags"],
        serde_json::json!([{"TagKey": "team", "TagValue": "ops"}])
    );
    assert_eq!(
        code(kms.tag_resource(&cli(), &a, &[("aws:x".into(), "v".into())])),
        ErrorCode::TagException
    );
    let many: Vec<_> = (0..51)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    assert_eq!(
        code(kms.tag_resource(&cli(), &a, &many)),
        ErrorCode::LimitExceededException
    );
}

#[test]
fn list_keys_pages() {
    let kms = Kms::in_memory();
    let mut ids: Vec<String> = (0..5).map(|_| new_key(&kms)).collect();
    ids.sort();
    let mut seen = vec![];
    let mut marker: Option<String> = None;
    loop {
        let page = kms.list_keys(&cli(), Some(2), marker.as_deref()).unwrap();
        for k in page["Keys"].as_array().unwrap() {
            seen.push(k["KeyId"].as_str().unwrap().to_string());
        }
        if page["Truncated"] == false {
            break;
        }
        marker = Some(page["NextMarker"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ids);
    assert_eq!(
        code(kms.list_keys(&cli(), Some(0), None)),
        ErrorCode::ValidationException
    );
    assert_eq!(
        code(kms.list_keys(&cli(), None, Some("bogus"))),
        ErrorCode::InvalidMarkerException
    );
}

#[test]
fn managed_keys_are_for_the_mount_only() {
    let kms = Kms::in_memory();
    let m = kms
        .create_managed_key(&cli(), "fs-1234", "kmsfs filesystem key")
        .unwrap();
    assert_eq!(m.key_manager, "KMSFS");
    assert!(m.key_rotation_enabled);
    let id = m.key_id.clone();
    kms.describe_key(&cli(), "alias/kmsfs/fs-1234").unwrap();
    kms.get_key_rotation_status(&cli(), &id).unwrap();
    let c = ctx(&[("kmsfs:path", "x")]);
    assert_eq!(
        code(kms.encrypt(&cli(), &id, b"x", &c, None)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        code(kms.disable_key(&cli(), &id)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        code(kms.schedule_key_deletion(&cli(), &id, None)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        code(kms.delete_alias(&cli(), "alias/kmsfs/fs-1234")),
        ErrorCode::AccessDeniedException
    );
    let other = new_key(&kms);
    assert_eq!(
        code(kms.update_alias(&cli(), "alias/kmsfs/fs-1234", &other)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        code(kms.create_alias(&cli(), "alias/mine", &id)),
        ErrorCode::AccessDeniedException
    );
    let dk = kms
        .generate_data_key(&mount(), &id, &DataKeySpec::aes_256(), &c, true)
        .unwrap();
    assert_eq!(
        code(kms.decrypt(&cli(), &dk.ciphertext_blob, &c, None, None)),
        ErrorCode::AccessDeniedException
    );
    kms.decrypt(&mount(), &dk.ciphertext_blob, &c, None, None)
        .unwrap();
}

#[test]
fn imported_key_material_lifecycle() {
    let (kms, clock) = kms_with_clock();
    let req = CreateKeyRequest {
        origin: Some("EXTERNAL".into()),
        ..Default::default()
    };
    let k = kms.create_key(&cli(), req).unwrap().key_id;
    assert_eq!(
        kms.describe_key(&cli(), &k).unwrap().key_state,
        "PendingImport"
    );
    assert_eq!(
        code(kms.encrypt(&cli(), &k, b"x", &ctx(&[]), None)),
        ErrorCode::KMSInvalidStateException
    );
    assert_eq!(
        code(kms.rotate_key_on_demand(&cli(), &k)),
        ErrorCode::KMSInvalidStateException
    );
    assert_eq!(
        code(kms.get_parameters_for_import(&cli(), &k, "RSAES_OAEP_SHA_1", "RSA_2048")),
        ErrorCode::ValidationException
    );
    let p = kms
        .get_parameters_for_import(&cli(), &k, "RSAES_OAEP_SHA_256", "RSA_2048")
        .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = b64.decode(p["PublicKey"].as_str().unwrap()).unwrap();
    let token = b64.decode(p["ImportToken"].as_str().unwrap()).unwrap();
    let material = [0x42u8; 32];
    let wrapped = wrap_for_import(&public, &material).unwrap();
    assert_eq!(
        code(kms.import_key_material(
            &cli(),
            &k,
            &[0; 32],
            &wrapped,
            Some("KEY_MATERIAL_DOES_NOT_EXPIRE"),
            None
        )),
        ErrorCode::InvalidImportTokenException
    );
    assert_eq!(
        code(kms.import_key_material(
            &cli(),
            &k,
            &token,
            &wrapped,
            Some("KEY_MATERIAL_EXPIRES"),
            None
        )),
        ErrorCode::ValidationException
    );
    let short = wrap_for_import(&public, &[1u8; 16]).unwrap();
    assert_eq!(
        code(kms.import_key_material(
            &cli(),
            &k,
            &token,
            &short,
            Some("KEY_MATERIAL_DOES_NOT_EXPIRE"),
            None
        )),
        ErrorCode::IncorrectKeyMaterialException
    );
    kms.import_key_material(
        &cli(),
        &k,
        &token,
        &wrapped,
        Some("KEY_MATERIAL_EXPIRES"),
        Some(T0 + 10 * DAY),
    )
    .unwrap();
    let m = kms.describe_key(&cli(), &k).unwrap();
    assert_eq!((m.key_state, m.origin), ("Enabled", "EXTERNAL"));
    assert_eq!(m.expiration_model.as_deref(), Some("KEY_MATERIAL_EXPIRES"));
    let e = kms.encrypt(&cli(), &k, b"byok", &ctx(&[]), None).unwrap();
    assert_eq!(
        code(kms.rotate_key_on_demand(&cli(), &k)),
        ErrorCode::UnsupportedOperationException
    );
    assert_eq!(
        code(kms.enable_key_rotation(&cli(), &k, None)),
        ErrorCode::UnsupportedOperationException
    );

    // Material expires: the key goes back to PendingImport.
    clock.advance(10 * DAY);
    assert_eq!(
        kms.describe_key(&cli(), &k).unwrap().key_state,
        "PendingImport"
    );
    assert_eq!(
        code(kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)),
        ErrorCode::KMSInvalidStateException
    );

    // Re-importing different material is refused; the same material restores it.
    let p = kms
        .get_parameters_for_import(&cli(), &k, "RSAES_OAEP_SHA_256", "RSA_2048")
        .unwrap();
    let public = b64.decode(p["PublicKey"].as_str().unwrap()).unwrap();
    let token = b64.decode(p["ImportToken"].as_str().unwrap()).unwrap();
    let wrong = wrap_for_import(&public, &[0x43u8; 32]).unwrap();
    assert_eq!(
        code(kms.import_key_material(
            &cli(),
            &k,
            &token,
            &wrong,
            Some("KEY_MATERIAL_DOES_NOT_EXPIRE"),
            None
        )),
        ErrorCode::IncorrectKeyMaterialException
    );
    let right = wrap_for_import(&public, &material).unwrap();
    kms.import_key_material(
        &cli(),
        &k,
        &token,
        &right,
        Some("KEY_MATERIAL_DOES_NOT_EXPIRE"),
        None,
    )
    .unwrap();
    assert_eq!(
        kms.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"byok"
    );

    kms.delete_imported_key_material(&cli(), &k).unwrap();
    assert_eq!(
        kms.describe_key(&cli(), &k).unwrap().key_state,
        "PendingImport"
    );
    let kmsfs_key = new_key(&kms);
    assert_eq!(
        code(kms.get_parameters_for_import(&cli(), &kmsfs_key, "RSAES_OAEP_SHA_256", "RSA_2048")),
        ErrorCode::UnsupportedOperationException
    );
}

#[test]
fn import_token_expires() {
    let (kms, clock) = kms_with_clock();
    let k = kms
        .create_key(
            &cli(),
            CreateKeyRequest {
                origin: Some("EXTERNAL".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .key_id;
    let p = kms
        .get_parameters_for_import(&cli(), &k, "RSAES_OAEP_SHA_256", "RSA_2048")
        .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = b64.decode(p["PublicKey"].as_str().unwrap()).unwrap();
    let token = b64.decode(p["ImportToken"].as_str().unwrap()).unwrap();
    clock.advance(DAY + 1);
    let wrapped = wrap_for_import(&public, &[7u8; 32]).unwrap();
    let e = kms
        .import_key_material(
            &cli(),
            &k,
            &token,
            &wrapped,
            Some("KEY_MATERIAL_DOES_NOT_EXPIRE"),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::InvalidImportTokenException | ErrorCode::ExpiredImportTokenException
        ),
        "{e}"
    );
}

fn key_file() -> RootSecret {
    RootSecret::KeyFile(Key256::from_bytes([9; 32]))
}

#[test]
fn persistence_across_instances() {
    let d = tempfile::tempdir().unwrap();
    let home = KmsHome::new(d.path().join("home"));
    let a = Kms::open(home.clone(), &key_file(), true, Options::default()).unwrap();
    let k = new_key(&a);
    let e = a.encrypt(&cli(), &k, b"persist", &ctx(&[]), None).unwrap();
    // A second instance (another process, in effect) sees the key and changes it.
    let b = Kms::open(home.clone(), &key_file(), false, Options::default()).unwrap();
    assert_eq!(b.account(), a.account());
    b.disable_key(&cli(), &k).unwrap();
    assert_eq!(
        code(a.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)),
        ErrorCode::DisabledException
    );
    let k2 = new_key(&a);
    drop((a, b));
    let c = Kms::open(home.clone(), &key_file(), false, Options::default()).unwrap();
    c.describe_key(&cli(), &k2).unwrap();
    c.enable_key(&cli(), &k).unwrap();
    assert_eq!(
        c.decrypt(&cli(), &e.ciphertext_blob, &ctx(&[]), None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"persist"
    );
    let wrong = RootSecret::KeyFile(Key256::from_bytes([8; 32]));
    assert!(Kms::open(home, &wrong, false, Options::default()).is_err());
}

#[test]
fn concurrent_creators_in_separate_instances_all_persist() {
    let d = tempfile::tempdir().unwrap();
    let home = KmsHome::new(d.path().join("home"));
    drop(Kms::open(home.clone(), &key_file(), true, Options::default()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let home = home.clone();
            std::thread::spawn(move || {
                let kms = Kms::open(home, &key_file(), false, Options::default()).unwrap();
                (0..5).map(|_| new_key(&kms)).collect::<Vec<_>>()
            })
        })
        .collect();
    let created: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let kms = Kms::open(home, &key_file(), false, Options::default()).unwrap();
    let listed = kms.list_keys(&cli(), Some(1000), None).unwrap();
    assert_eq!(listed["Keys"].as_array().unwrap().len(), 20);
    for k in created {
        kms.describe_key(&cli(), &k).unwrap();
    }
}

#[test]
fn eight_threads_lose_no_audit_record() {
    let d = tempfile::tempdir().unwrap();
    let home = KmsHome::new(d.path().join("home"));
    let kms = Arc::new(Kms::open(home.clone(), &key_file(), true, Options::default()).unwrap());
    let k = new_key(&kms);
    let per_thread = 200;
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let kms = kms.clone();
            let k = k.clone();
            std::thread::spawn(move || {
                let c = ctx(&[("kmsfs:path", &format!("t{t}"))]);
                for _ in 0..per_thread {
                    let dk = kms
                        .generate_data_key(&mount(), &k, &DataKeySpec::aes_256(), &c, true)
                        .unwrap();
                    let d = kms
                        .decrypt(&mount(), &dk.ciphertext_blob, &c, None, None)
                        .unwrap();
                    assert_eq!(d.plaintext.as_bytes(), dk.plaintext.unwrap().as_bytes());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    drop(kms);
    let log = std::fs::read_to_string(home.audit_path()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    // Calls, not lines: identical Decrypts through the mount are coalesced
    // into one record with a count (docs/audit-log.md).
    let count = |name: &str| {
        lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["eventName"] == name)
            .map(|r| r["coalesced"]["count"].as_u64().unwrap_or(1) as usize)
            .sum::<usize>()
    };
    assert_eq!(count("GenerateDataKey"), 8 * per_thread);
    assert_eq!(count("Decrypt"), 8 * per_thread);
    let opened = home.open(&key_file()).unwrap();
    let report = kmsfs::kms::audit_verify::verify_trail(
        &home.dir_file().unwrap(),
        std::ffi::OsStr::new("audit.log"),
        &opened.keys.audit,
        opened.state.audit_anchor.as_ref(),
        1,
    )
    .unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.records as usize, lines.len());
    // The closing writer anchored the chain's end in the keystore.
    assert_eq!(
        report.anchored.map(|a| a.seq),
        Some(lines.len() as u64),
        "the anchor is the last record"
    );
}

#[test]
fn audit_records_caller_and_context_but_no_secrets() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.log");
    let kms =
        Kms::in_memory_audited(&path, Key256::from_bytes([1; 32]), Options::default()).unwrap();
    let k = new_key(&kms);
    let c = ctx(&[("kmsfs:path", "projects/x.txt")]);
    let dk = kms
        .generate_data_key(&mount(), &k, &DataKeySpec::aes_256(), &c, true)
        .unwrap();
    let _ = kms.decrypt(&mount(), &dk.ciphertext_blob, &ctx(&[]), None, None);
    let log = std::fs::read_to_string(&path).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let gdk = &recs[1];
    assert_eq!(gdk["eventName"], "GenerateDataKey");
    assert_eq!(
        gdk["requestParameters"]["encryptionContext"]["kmsfs:path"],
        "projects/x.txt"
    );
    assert_eq!(gdk["userIdentity"]["uid"], unsafe { libc::getuid() });
    assert_eq!(gdk["userIdentity"]["pid"], std::process::id());
    assert_eq!(gdk["userIdentity"]["invokedBy"], "mount");
    assert!(gdk["resources"][0]["ARN"].as_str().unwrap().ends_with(&k));
    let failed = &recs[2];
    assert_eq!(failed["errorCode"], "InvalidCiphertextException");
    use base64::Engine;
    let pt = base64::engine::general_purpose::STANDARD.encode(dk.plaintext.unwrap().as_bytes());
    assert!(!log.contains(&pt));
}

#[test]
fn unwritable_audit_log_fails_closed() {
    // Not a regular file: refused at open, naming why.
    let e = Kms::in_memory_audited(
        std::path::Path::new("/dev/full"),
        Key256::from_bytes([1; 32]),
        Options::default(),
    )
    .err()
    .expect("/dev/full is no audit log");
    assert_eq!(e.code, ErrorCode::KMSInternalException);
    assert_eq!(
        e.message,
        "cannot open audit log /dev/full: full is not a regular file"
    );
    // A log that turns unwritable under a running KMS: every call fails.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.log");
    let kms =
        Kms::in_memory_audited(&path, Key256::from_bytes([1; 32]), Options::default()).unwrap();
    kms.create_key(&cli(), CreateKeyRequest::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = kms
        .create_key(&cli(), CreateKeyRequest::default())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::KMSInternalException);
    assert!(e.message.contains("audit log"), "{e}");
    assert_eq!(
        code(kms.generate_random(&cli(), 16)),
        ErrorCode::KMSInternalException
    );
}

fn user(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        ..Caller::this_process(Via::Mount)
    }
}

#[test]
fn policies_and_grants_through_the_library() {
    use kmsfs::kms::grant::Constraints;
    use kmsfs::kms::service::GrantRequest;
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    let c = ctx(&[("app", "x")]);
    let blob = kms
        .encrypt(&cli(), &k, b"s", &c, None)
        .unwrap()
        .ciphertext_blob;
    // uid 4242 is in no policy statement.
    assert_eq!(
        code(kms.decrypt(&user(4242), &blob, &c, None, None)),
        ErrorCode::AccessDeniedException
    );
    let sub = Constraints {
        encryption_context_subset: Some([("app".to_string(), "x".to_string())].into()),
        encryption_context_equals: None,
    };
    let g = kms
        .create_grant(
            &cli(),
            &k,
            GrantRequest {
                grantee: "uid:4242".into(),
                operations: vec!["Decrypt".into(), "CreateGrant".into()],
                constraints: Some(sub),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        kms.decrypt(&user(4242), &blob, &c, None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"s"
    );
    let other = kms
        .encrypt(&cli(), &k, b"s", &ctx(&[("app", "y")]), None)
        .unwrap()
        .ciphertext_blob;
    assert_eq!(
        code(kms.decrypt(&user(4242), &other, &ctx(&[("app", "y")]), None, None)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        code(kms.encrypt(&user(4242), &k, b"s", &c, None)),
        ErrorCode::AccessDeniedException
    );
    // A grant made under that grant cannot add operations it lacks.
    let sub2 = Some(Constraints {
        encryption_context_subset: Some([("app".to_string(), "x".to_string())].into()),
        encryption_context_equals: None,
    });
    let wider = GrantRequest {
        grantee: "uid:5000".into(),
        operations: vec!["Encrypt".into()],
        constraints: sub2.clone(),
        ..Default::default()
    };
    let mut with_ctx_caller = user(4242);
    with_ctx_caller.grant_tokens = vec![g["GrantToken"].as_str().unwrap().to_string()];
    assert_eq!(
        code(kms.create_grant(&with_ctx_caller, &k, wider)),
        ErrorCode::AccessDeniedException
    );
    // Revoked: denied again on the next call.
    kms.revoke_grant(&cli(), &k, g["GrantId"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        code(kms.decrypt(&user(4242), &blob, &c, None, None)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        code(kms.decrypt(&with_ctx_caller, &blob, &c, None, None)),
        ErrorCode::InvalidGrantTokenException
    );
}

/// Accounts that tests create, delete and recreate: the KMS resolves
/// `user:`/`group:` principals through them instead of /etc/passwd.
#[derive(Default)]
struct Accounts {
    users: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    lookups: std::sync::atomic::AtomicUsize,
}

impl Accounts {
    fn with(users: &[(&str, u32)]) -> Arc<Self> {
        let a = Accounts::default();
        for (n, id) in users {
            a.set(n, Some(*id));
        }
        Arc::new(a)
    }

    fn set(&self, name: &str, uid: Option<u32>) {
        let mut u = self.users.lock().unwrap();
        match uid {
            Some(id) => u.insert(name.to_string(), id),
            None => u.remove(name),
        };
    }
}

impl kmsfs::kms::policy::NameResolver for Accounts {
    fn uid(&self, name: &str) -> Option<u32> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.users.lock().unwrap().get(name).copied()
    }
    fn gid(&self, _: &str) -> Option<u32> {
        None
    }
}

/// An audited service resolving names through `accounts`, with a clock that
/// the tests move past the second for which name lookups are remembered.
fn kms_with_accounts(accounts: &Arc<Accounts>, audit: &std::path::Path) -> (Kms, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let kms = Kms::in_memory_audited(
        audit,
        Key256::from_bytes([3; 32]),
        Options {
            clock: clock.clone(),
            names: accounts.clone(),
            ..Options::default()
        },
    )
    .unwrap();
    (kms, clock)
}

fn root_cli() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        ..Caller::this_process(Via::Cli)
    }
}

fn user_cli(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        ..Caller::this_process(Via::Cli)
    }
}

fn audit_records(kms: &Kms, path: &std::path::Path) -> Vec<serde_json::Value> {
    kms.sync_audit().unwrap();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The last record of `event` by `uid` (successful if `ok`).
fn last_record<'a>(
    recs: &'a [serde_json::Value],
    event: &str,
    uid: u32,
    ok: bool,
) -> &'a serde_json::Value {
    recs.iter()
        .rev()
        .find(|r| {
            r["eventName"] == event
                && r["userIdentity"]["uid"] == uid
                && r.get("errorCode").is_none() == ok
        })
        .unwrap_or_else(|| panic!("no {event} record by uid {uid} (ok: {ok})"))
}

const ADMINS_AND_ALICE: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"Admins","Effect":"Allow","Principal":{"Unix":["uid:0","user:bob"]},"Action":"kms:*","Resource":"*"},
    {"Sid":"AliceUse","Effect":"Allow","Principal":{"Unix":"user:alice"},"Action":["kms:Decrypt","kms:Encrypt"],"Resource":"*"}]}"#;

#[test]
fn a_deleted_user_matches_nobody_and_locks_no_one_out() {
    let accounts = Accounts::with(&[("alice", 1001), ("bob", 1002)]);
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let (kms, clock) = kms_with_accounts(&accounts, &log);
    let root = root_cli();
    let (meta, warnings) = kms
        .create_key_with_warnings(
            &root,
            CreateKeyRequest {
                policy: Some(ADMINS_AND_ALICE.into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let k = meta.key_id;
    let c = ctx(&[("app", "x")]);
    let blob = kms
        .encrypt(&user(1001), &k, b"s", &c, None)
        .unwrap()
        .ciphertext_blob;
    kms.decrypt(&user(1002), &blob, &c, None, None).unwrap();

    // bob's account is deleted: he matches nobody, the policy still parses,
    // and alice and root keep what it gives them.
    accounts.set("bob", None);
    clock.advance(1);
    let e = kms.decrypt(&user(1002), &blob, &c, None, None).unwrap_err();
    assert_eq!(e.code, ErrorCode::AccessDeniedException);
    assert!(
        e.message.contains("no key policy statement or grant"),
        "{e}"
    );
    assert_eq!(
        kms.decrypt(&user(1001), &blob, &c, None, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"s"
    );
    kms.disable_key(&root, &k).unwrap();
    kms.enable_key(&root, &k).unwrap();
    let (got, warnings) = kms.get_key_policy_with_warnings(&root, &k, None).unwrap();
    assert_eq!(got["Policy"], ADMINS_AND_ALICE);
    assert_eq!(warnings, vec!["user:bob".to_string()]);
    // The decisions the policy made name the principal that resolves no more.
    let recs = audit_records(&kms, &log);
    let alice = &last_record(&recs, "Decrypt", 1001, true)["additionalEventData"]["authorization"];
    assert_eq!(alice["by"], "key policy statement AliceUse");
    assert_eq!(
        alice["unresolvedPrincipals"],
        serde_json::json!(["user:bob"])
    );
    let bob = &last_record(&recs, "Decrypt", 1002, false)["additionalEventData"]["authorization"];
    assert_eq!(bob["decision"], "Deny");
    assert_eq!(bob["unresolvedPrincipals"], serde_json::json!(["user:bob"]));

    // Root puts a policy that gives root nothing (the lockout check wants
    // the bypass), and can still read and replace it: the recovery rule.
    let alice_only = r#"{"Statement":[{"Sid":"AliceOnly","Effect":"Allow","Principal":{"Unix":"user:alice"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    assert_eq!(
        code(kms.put_key_policy(&root, &k, None, alice_only, false)),
        ErrorCode::MalformedPolicyDocumentException
    );
    kms.put_key_policy(&root, &k, None, alice_only, true)
        .unwrap();
    assert_eq!(
        code(kms.disable_key(&root, &k)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        kms.get_key_policy(&root, &k, None).unwrap()["Policy"],
        alice_only
    );
    let warnings = kms
        .put_key_policy_with_warnings(&root, &k, None, ADMINS_AND_ALICE, false)
        .unwrap();
    assert_eq!(warnings, vec!["user:bob".to_string()]);
    let recs = audit_records(&kms, &log);
    let put = &last_record(&recs, "PutKeyPolicy", 0, true);
    let authz = &put["additionalEventData"]["authorization"];
    assert_eq!(authz["decision"], "Allow");
    assert_eq!(authz["by"], "root recovery rule");
    assert_eq!(authz["overrides"]["decision"], "Deny");
    assert_eq!(
        put["responseElements"]["unresolvedPrincipals"],
        serde_json::json!(["user:bob"])
    );
    let get = &last_record(&recs, "GetKeyPolicy", 0, true);
    assert_eq!(
        get["additionalEventData"]["authorization"]["by"],
        "root recovery rule"
    );
    // The policy is root's again, by its own statement.
    kms.disable_key(&root, &k).unwrap();
    // The recovery rule is root's alone, and only through the CLI.
    assert_eq!(
        code(kms.put_key_policy(&user_cli(1001), &k, None, alice_only, true)),
        ErrorCode::AccessDeniedException
    );
    kms.put_key_policy(&root, &k, None, alice_only, true)
        .unwrap();
    let root_via_mount = Caller {
        uid: 0,
        gid: 0,
        ..Caller::this_process(Via::Mount)
    };
    assert_eq!(
        code(kms.get_key_policy(&root_via_mount, &k, None)),
        ErrorCode::AccessDeniedException
    );
    // A policy naming only accounts that do not exist is put, with warnings.
    let ghosts = r#"{"Statement":[{"Sid":"Root","Effect":"Allow","Principal":{"Unix":"uid:0"},"Action":"kms:*","Resource":"*"},
        {"Sid":"Ghosts","Effect":"Allow","Principal":{"Unix":["user:ghost","user:bob","user:ghost"]},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    assert_eq!(
        kms.put_key_policy_with_warnings(&root, &k, None, ghosts, false)
            .unwrap(),
        vec!["user:ghost".to_string(), "user:bob".to_string()]
    );
    // The same for keys kmsfs manages: crypto stays the mount's, but root
    // reads and replaces the policy.
    let m = kms
        .create_managed_key(&root, "fs-1", "managed")
        .unwrap()
        .key_id;
    let doc = kms.get_key_policy(&root, &m, None).unwrap()["Policy"]
        .as_str()
        .unwrap()
        .to_string();
    kms.put_key_policy(&root, &m, None, &doc, false).unwrap();
    assert_eq!(
        code(kms.encrypt(&root, &m, b"x", &c, None)),
        ErrorCode::AccessDeniedException
    );
}

#[test]
fn a_recreated_user_does_not_inherit_policy_or_grant() {
    use kmsfs::kms::service::GrantRequest;
    let accounts = Accounts::with(&[("bob", 1002), ("carol", 1003)]);
    let d = tempfile::tempdir().unwrap();
    let (kms, clock) = kms_with_accounts(&accounts, &d.path().join("audit.log"));
    let root = root_cli();
    let k = kms
        .create_key(
            &root,
            CreateKeyRequest {
                policy: Some(ADMINS_AND_ALICE.into()),
                ..Default::default()
            },
        )
        .unwrap()
        .key_id;
    kms.create_grant(
        &root,
        &k,
        GrantRequest {
            grantee: "user:carol".into(),
            operations: vec!["Decrypt".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let c = ctx(&[("app", "x")]);
    let blob = kms
        .encrypt(&root, &k, b"s", &c, None)
        .unwrap()
        .ciphertext_blob;
    kms.decrypt(&user(1002), &blob, &c, None, None).unwrap();
    kms.decrypt(&user(1003), &blob, &c, None, None).unwrap();

    // bob and carol are deleted and recreated with new uids; another
    // account gets bob's old uid.
    accounts.set("bob", Some(1010));
    accounts.set("carol", Some(1011));
    accounts.set("eve", Some(1002));
    clock.advance(1);
    for uid in [1010, 1002, 1011, 1003] {
        assert_eq!(
            code(kms.decrypt(&user(uid), &blob, &c, None, None)),
            ErrorCode::AccessDeniedException,
            "uid {uid}"
        );
    }
    assert_eq!(
        code(kms.disable_key(&user_cli(1010), &k)),
        ErrorCode::AccessDeniedException
    );
    assert_eq!(
        kms.get_key_policy_with_warnings(&root, &k, None).unwrap().1,
        vec!["user:bob".to_string(), "user:alice".to_string()]
    );
    // Put again, the policy binds bob's name to the account it names now;
    // a new grant binds carol's.
    assert_eq!(
        kms.put_key_policy_with_warnings(&root, &k, None, ADMINS_AND_ALICE, false)
            .unwrap(),
        vec!["user:alice".to_string()]
    );
    kms.create_grant(
        &root,
        &k,
        GrantRequest {
            grantee: "user:carol".into(),
            operations: vec!["Decrypt".into()],
            ..Default::default()
        },
    )
    .unwrap();
    kms.decrypt(&user(1010), &blob, &c, None, None).unwrap();
    kms.decrypt(&user(1011), &blob, &c, None, None).unwrap();
    assert_eq!(
        code(kms.decrypt(&user(1002), &blob, &c, None, None)),
        ErrorCode::AccessDeniedException
    );
    // A grant for an account that does not exist is refused.
    let e = kms
        .create_grant(
            &root,
            &k,
            GrantRequest {
                grantee: "user:ghost".into(),
                operations: vec!["Decrypt".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationException);
    assert!(e.message.contains("\"user:ghost\": no such user"), "{e}");
}

/// Evaluation on every file open must not look names up each time: lookups
/// are remembered for a second.
#[test]
fn name_lookups_are_remembered_for_a_second() {
    let accounts = Accounts::with(&[("alice", 1001), ("bob", 1002)]);
    let d = tempfile::tempdir().unwrap();
    let (kms, clock) = kms_with_accounts(&accounts, &d.path().join("audit.log"));
    let k = kms
        .create_key(
            &root_cli(),
            CreateKeyRequest {
                policy: Some(ADMINS_AND_ALICE.into()),
                ..Default::default()
            },
        )
        .unwrap()
        .key_id;
    let c = ctx(&[("app", "x")]);
    let blob = kms
        .encrypt(&user(1001), &k, b"s", &c, None)
        .unwrap()
        .ciphertext_blob;
    let before = accounts.lookups.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..1000 {
        kms.decrypt(&user(1001), &blob, &c, None, None).unwrap();
    }
    // At most a few, should a second of real time pass in the loop.
    let during = accounts.lookups.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(during <= 6, "{during} lookups for 1000 decrypts");
    clock.advance(1);
    kms.decrypt(&user(1001), &blob, &c, None, None).unwrap();
    assert!(accounts.lookups.load(std::sync::atomic::Ordering::Relaxed) > before + during);
}

#[test]
fn grant_constraints_that_constrain_nothing_are_refused() {
    use kmsfs::kms::KmsError;
    use kmsfs::kms::grant::Constraints;
    use kmsfs::kms::service::GrantRequest;
    use std::collections::BTreeMap;
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    // A miscased member names itself, and makes no Constraints at all.
    let e = KmsError::from(
        Constraints::from_json(r#"{"EncryptionContextSubSet": {"kmsfs:path": "shared/a"}}"#)
            .unwrap_err(),
    );
    assert_eq!(e.code, ErrorCode::ValidationException);
    assert!(
        e.message
            .contains("unknown field `EncryptionContextSubSet`"),
        "{e}"
    );
    let grant = |c: Constraints| {
        kms.create_grant(
            &cli(),
            &k,
            GrantRequest {
                grantee: "uid:4242".into(),
                operations: vec!["Decrypt".into()],
                constraints: Some(c),
                ..Default::default()
            },
        )
    };
    let e = grant(Constraints::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationException);
    assert!(
        e.message
            .contains("must give EncryptionContextSubset or EncryptionContextEquals"),
        "{e}"
    );
    let e = grant(Constraints {
        encryption_context_subset: Some(BTreeMap::new()),
        encryption_context_equals: None,
    })
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationException);
    assert!(
        e.message
            .contains("Constraints.EncryptionContextSubset is empty"),
        "{e}"
    );
    let e = grant(Constraints {
        encryption_context_subset: None,
        encryption_context_equals: Some(BTreeMap::new()),
    })
    .unwrap_err();
    assert!(
        e.message
            .contains("Constraints.EncryptionContextEquals is empty"),
        "{e}"
    );
    let grants = kms.list_grants(&cli(), &k, None, None, None, None).unwrap();
    assert_eq!(grants["Grants"], serde_json::json!([]));
}

#[test]
fn malformed_policy_conditions_and_principals_are_refused() {
    let kms = Kms::in_memory();
    let k = new_key(&kms);
    let before = kms.get_key_policy(&root_cli(), &k, None).unwrap()["Policy"].clone();
    let with = |principal: &str, condition: &str| {
        format!(
            r#"{{"Statement":[{{"Sid":"Root","Effect":"Allow","Principal":{principal},"Action":"kms:*","Resource":"*"}},
               {{"Sid":"Limited","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{condition}}}]}}"#
        )
    };
    let root = r#"{"Unix":"uid:0"}"#;
    let ok_cond = r#"{"StringLike":{"kms:EncryptionContext:kmsfs:path":"private/*"}}"#;
    for (doc, want) in [
        (
            with(
                root,
                r#"{"StringLike":{"kms:EncryptionContext:kmsfs:path":"private/*"},"Foo":{"kms:EncryptionContext:a":"b"}}"#,
            ),
            "condition operator \"Foo\" is not supported",
        ),
        (
            with(
                root,
                r#"{"stringlike":{"kms:EncryptionContext:kmsfs:path":"private/*"}}"#,
            ),
            "operators are case-sensitive: StringLike",
        ),
        (
            with(
                root,
                r#"{"StringLike":{"kms:EncryptionContext:kmsfs:path":"private/*","kms:Unknown":"x"}}"#,
            ),
            "condition key \"kms:Unknown\" is not supported",
        ),
        (with(root, "{}"), "Condition is empty"),
        (
            with(root, r#"{"Null":{"kms:EncryptionContext:a":"True"}}"#),
            "\"True\" is not \"true\" or \"false\"",
        ),
        (
            with(r#"{"unix":"uid:0"}"#, ok_cond),
            "principal type \"unix\"",
        ),
        (with(r#"{"Unix":"Uid:0"}"#, ok_cond), "principal \"Uid:0\""),
        (
            with(root, ok_cond)
                .replace(r#""Effect":"Deny""#, r#""Effect":"Deny","Effect":"Allow""#),
            "\"Effect\" appears twice",
        ),
    ] {
        let e = kms
            .put_key_policy(&root_cli(), &k, None, &doc, false)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedPolicyDocumentException, "{doc}");
        assert!(e.message.contains(want), "{doc}: {e}");
    }
    assert_eq!(
        kms.get_key_policy(&root_cli(), &k, None).unwrap()["Policy"],
        before
    );
    kms.put_key_policy(&root_cli(), &k, None, &with(root, ok_cond), false)
        .unwrap();
}
