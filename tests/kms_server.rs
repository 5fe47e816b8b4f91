//! `kmsfs kms serve` driven by real AWS clients: the AWS CLI and boto3,
//! installed by scripts/pydeps.sh, against the real binary on loopback.

mod common;
use common::serve::{Server, ok};

#[test]
fn the_aws_cli_runs_every_operation_against_the_server() {
    let s = Server::start(&[]);
    let creds = s.access_key("uid:0");
    let out = ok(&s.bash(
        &creds,
        r#"
E="--endpoint-url $ENDPOINT"
k() { aws kms "$@" $E; }
t() { aws kms "$@" $E --output text; }
# An error's code, from the CLI's message.
code() { if out=$(aws kms "$@" $E 2>&1); then echo "no error: $out"; else echo "$out" | grep -o '([A-Za-z]*Exception)' | head -1; fi; }
K=$(t create-key --description cli --tags TagKey=team,TagValue=blue --query KeyMetadata.KeyId)
echo "describe $(t describe-key --key-id $K --query KeyMetadata.Description)"
echo "list $(t list-keys --query 'length(Keys)')"
printf 'attack at dawn' > pt
t encrypt --key-id $K --plaintext fileb://pt --encryption-context app=x --query CiphertextBlob | base64 -d > ct
echo "decrypt $(t decrypt --ciphertext-blob fileb://ct --encryption-context app=x --query Plaintext | base64 -d)"
echo "wrong context $(code decrypt --ciphertext-blob fileb://ct --encryption-context app=y)"
t re-encrypt --ciphertext-blob fileb://ct --source-encryption-context app=x --destination-key-id $KEY_ID --destination-encryption-context app=z --query CiphertextBlob | base64 -d > ct2
echo "re-encrypted $(t decrypt --ciphertext-blob fileb://ct2 --encryption-context app=z --query Plaintext | base64 -d)"
echo "data key $(t generate-data-key --key-id $K --key-spec AES_256 --query 'length(Plaintext)')"
echo "no plaintext $(k generate-data-key-without-plaintext --key-id $K --number-of-bytes 16 | grep -c Plaintext || true)"
echo "random $(t generate-random --number-of-bytes 32 | base64 -d | wc -c)"
k create-alias --alias-name alias/cli --target-key-id $K
k update-alias --alias-name alias/cli --target-key-id $KEY_ID
echo "alias $(t list-aliases --key-id $KEY_ID --query 'Aliases[0].AliasName')"
k delete-alias --alias-name alias/cli
k tag-resource --key-id $K --tags TagKey=env,TagValue=test
k untag-resource --key-id $K --tag-keys team
echo "tags $(t list-resource-tags --key-id $K --query 'Tags[*].TagKey')"
P=$(t get-key-policy --key-id $K --policy-name default --query Policy)
k put-key-policy --key-id $K --policy-name default --policy "$P"
G=$(t create-grant --key-id $K --grantee-principal uid:4242 --retiring-principal uid:0 --operations Decrypt Encrypt --query GrantId)
echo "grants $(t list-grants --key-id $K --query 'length(Grants)')"
echo "retirable $(t list-retirable-grants --retiring-principal uid:0 --query 'length(Grants)')"
k revoke-grant --key-id $K --grant-id $G
T=$(t create-grant --key-id $K --grantee-principal uid:4243 --retiring-principal uid:0 --operations Decrypt --query GrantToken)
k retire-grant --grant-token "$T"
echo "grants after $(t list-grants --key-id $K --query 'length(Grants)')"
k enable-key-rotation --key-id $K
echo "rotation $(t get-key-rotation-status --key-id $K --query KeyRotationEnabled)"
k rotate-key-on-demand --key-id $K >/dev/null
echo "rotations $(t list-key-rotations --key-id $K --query 'length(Rotations)')"
k disable-key-rotation --key-id $K
k update-key-description --key-id $K --description renamed
echo "renamed $(t describe-key --key-id $K --query KeyMetadata.Description)"
k disable-key --key-id $K
echo "disabled $(code encrypt --key-id $K --plaintext fileb://pt)"
k enable-key --key-id $K
echo "deletion $(t schedule-key-deletion --key-id $K --pending-window-in-days 7 --query KeyState)"
echo "pending $(code encrypt --key-id $K --plaintext fileb://pt)"
echo "cancelled $(t cancel-key-deletion --key-id $K --query KeyId | grep -c $K)"
X=$(t create-key --origin EXTERNAL --query KeyMetadata.KeyId)
echo "import $(k get-parameters-for-import --key-id $X --wrapping-algorithm RSAES_OAEP_SHA_256 --wrapping-key-spec RSA_2048 | grep -c ImportToken)"
echo "no material $(code delete-imported-key-material --key-id $X)"
echo "unknown key $(code describe-key --key-id 11111111-2222-3333-4444-555555555555)"
echo "bad alias $(code create-alias --alias-name nope --target-key-id $K)"
"#,
    ));
    let expect = [
        "describe cli",
        "list 2",
        "decrypt attack at dawn",
        "wrong context (InvalidCiphertextException)",
        "re-encrypted attack at dawn",
        "data key 44",
        "no plaintext 0",
        "random 32",
        "alias alias/cli",
        "tags env",
        "grants 1",
        "retirable 1",
        "grants after 0",
        "rotation True",
        "rotations 1",
        "renamed renamed",
        "disabled (DisabledException)",
        "deletion PendingDeletion",
        "pending (KMSInvalidStateException)",
        "cancelled 1",
        "import 1",
        "unknown key (NotFoundException)",
        "bad alias (",
    ];
    for e in expect {
        assert!(
            out.lines().any(|l| l.starts_with(e)),
            "missing {e:?} in:\n{out}"
        );
    }
    // Every call through the server is audited with its client's identity.
    let records = s.audit();
    let api: Vec<_> = records
        .iter()
        .filter(|r| r["userIdentity"]["invokedBy"] == "api")
        .collect();
    assert!(api.len() > 40, "{} API records", api.len());
    for r in &api {
        assert_eq!(r["sourceIPAddress"], "127.0.0.1", "{r}");
        assert_eq!(r["userIdentity"]["accessKeyId"], creds.0.as_str(), "{r}");
        assert!(
            r["userAgent"].as_str().unwrap().starts_with("aws-cli/"),
            "{r}"
        );
    }
    assert!(
        !std::fs::read_to_string(s.home.join("audit.log"))
            .unwrap()
            .contains(&creds.1),
        "the secret access key is in the audit log"
    );
}
