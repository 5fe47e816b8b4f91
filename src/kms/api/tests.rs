use super::*;

#[test]
fn every_operation_parses_from_its_name_and_body_and_round_trips() {
    let bodies: &[(&str, &str)] = &[
        (
            "CreateKey",
            r#"{"Description":"d","Tags":[{"TagKey":"a","TagValue":"b"}]}"#,
        ),
        ("DescribeKey", r#"{"KeyId":"alias/x"}"#),
        ("ListKeys", r#"{}"#),
        (
            "Encrypt",
            r#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":"b"}}"#,
        ),
        ("Decrypt", r#"{"CiphertextBlob":"aGk="}"#),
        ("GenerateDataKey", r#"{"KeyId":"k","KeySpec":"AES_256"}"#),
        (
            "CreateGrant",
            r#"{"KeyId":"k","GranteePrincipal":"uid:1","Operations":["Decrypt"],"Constraints":{"EncryptionContextSubset":{"a":"b"}}}"#,
        ),
        ("RetireGrant", r#"{"GrantToken":"t"}"#),
    ];
    for (op, body) in bodies {
        let req = Request::parse(op, body.as_bytes()).unwrap_or_else(|e| panic!("{op}: {e:?}"));
        assert_eq!(req.operation(), *op);
        let again = serde_json::to_vec(&req.body()).unwrap();
        let back = Request::parse(op, &again).unwrap();
        assert_eq!(back.body(), req.body(), "{op}");
    }
    // An empty body is an empty object (ListKeys with no members).
    assert_eq!(
        Request::parse("ListKeys", b"").unwrap().operation(),
        "ListKeys"
    );
}

#[test]
fn bad_requests_get_awss_error_codes() {
    let code = |op: &str, body: &str| Request::parse(op, body.as_bytes()).unwrap_err().code;
    assert_eq!(code("Frobnicate", "{}"), "UnknownOperationException");
    assert_eq!(code("Encrypt", "{not json"), "SerializationException");
    assert_eq!(code("Encrypt", "[1]"), "SerializationException");
    assert_eq!(
        code("Encrypt", r#"{"KeyId":"k","Plaintext":"%%%"}"#),
        "SerializationException"
    );
    assert_eq!(
        code("Encrypt", r#"{"KeyId":7,"Plaintext":"aGk="}"#),
        "SerializationException"
    );
    assert_eq!(
        code("Encrypt", r#"{"Plaintext":"aGk="}"#),
        "ValidationException"
    );
    assert_eq!(code("DescribeKey", "{}"), "ValidationException");
}

#[test]
fn blobs_never_show_their_bytes_in_debug_output() {
    let req = Request::parse("Encrypt", br#"{"KeyId":"k","Plaintext":"c2VjcmV0"}"#).unwrap();
    let dbg = format!("{req:?}");
    assert!(
        !dbg.contains("secret") && !dbg.contains("c2VjcmV0"),
        "{dbg}"
    );
    assert!(dbg.contains("Blob(6 bytes)"), "{dbg}");
}

#[test]
fn every_operation_runs_against_the_core() {
    let kms = Kms::in_memory();
    let caller = Caller::this_process(crate::kms::Via::Api);
    let call = |op: &str, body: serde_json::Value| {
        let req = Request::parse(op, body.to_string().as_bytes()).unwrap();
        run(&kms, &caller, req)
    };
    let meta = call("CreateKey", serde_json::json!({"Description": "api"}))
        .unwrap()
        .value;
    let id = meta["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let enc = call(
        "Encrypt",
        serde_json::json!({"KeyId": id, "Plaintext": "aGk=", "EncryptionContext": {"p": "q"}}),
    )
    .unwrap()
    .value;
    let dec = call("Decrypt", serde_json::json!({"CiphertextBlob": enc["CiphertextBlob"], "EncryptionContext": {"p": "q"}}))
        .unwrap()
        .value;
    assert_eq!(dec["Plaintext"], "aGk=");
    let e = call(
        "Decrypt",
        serde_json::json!({"CiphertextBlob": enc["CiphertextBlob"]}),
    )
    .unwrap_err();
    assert_eq!(e.code, crate::kms::ErrorCode::InvalidCiphertextException);
    let e = call(
        "Encrypt",
        serde_json::json!({"KeyId": id, "Plaintext": "aGk=", "DryRun": true}),
    )
    .unwrap_err();
    assert_eq!(e.code, crate::kms::ErrorCode::UnsupportedOperationException);
    call(
        "CreateAlias",
        serde_json::json!({"AliasName": "alias/api", "TargetKeyId": id}),
    )
    .unwrap();
    let l = call("ListAliases", serde_json::json!({"KeyId": id}))
        .unwrap()
        .value;
    assert_eq!(l["Aliases"][0]["AliasName"], "alias/api");
    call("DisableKey", serde_json::json!({"KeyId": "alias/api"})).unwrap();
    let e = call(
        "GenerateDataKey",
        serde_json::json!({"KeyId": id, "KeySpec": "AES_256"}),
    )
    .unwrap_err();
    assert_eq!(e.code, crate::kms::ErrorCode::DisabledException);
}
