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

/// Python that sends raw signed requests (botocore's own signer) with a
/// chosen clock, body or secret, and prints `status code` per case.
const RAW: &str = r#"
import datetime, json, os, sys, urllib.request
import botocore.auth, botocore.awsrequest, botocore.credentials
ENDPOINT = os.environ["ENDPOINT"]
CREDS = botocore.credentials.Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])

def skewed(skew):
    def now(remove_tzinfo=True):
        d = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=skew)
        return d.replace(tzinfo=None) if remove_tzinfo else d
    return now

def send(op, body, creds=CREDS, skew=0, tamper=None, sign=True, headers=None):
    req = botocore.awsrequest.AWSRequest(method="POST", url=ENDPOINT + "/", data=body,
        headers={"X-Amz-Target": "TrentService." + op, "Content-Type": "application/x-amz-json-1.1", **(headers or {})})
    if sign:
        # botocore's signer takes its time from this function.
        real = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = skewed(skew)
        try:
            botocore.auth.SigV4Auth(creds, "kms", "us-west-2").add_auth(req)
        finally:
            botocore.auth.get_current_datetime = real
    data = tamper if tamper is not None else req.body
    r = urllib.request.Request(ENDPOINT + "/", data=data, method="POST", headers=dict(req.headers.items()))
    try:
        with urllib.request.urlopen(r, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

def case(name, *a, **k):
    status, body = send(*a, **k)
    print(name, status, body.get("__type", "ok"), body.get("message", "")[:80])
"#;

#[test]
fn sigv4_failures_and_malformed_requests_get_awss_error_codes() {
    let s = Server::start(&[]);
    let creds = s.access_key("uid:0");
    let script = format!(
        r#"{RAW}
kid = json.dumps({{"KeyId": os.environ["KEY_ID"]}}).encode()
case("good", "DescribeKey", kid)
case("wrong-secret", "DescribeKey", kid, creds=botocore.credentials.Credentials(CREDS.access_key, "x" * 40))
case("unknown-key", "DescribeKey", kid, creds=botocore.credentials.Credentials("KMSFAAAAAAAAAAAAAAAA", CREDS.secret_key))
case("skewed-past", "DescribeKey", kid, skew=-600)
case("skewed-future", "DescribeKey", kid, skew=600)
case("small-skew", "DescribeKey", kid, skew=-120)
case("tampered-body", "DescribeKey", kid, tamper=json.dumps({{"KeyId": "alias/other"}}).encode())
case("unsigned", "DescribeKey", kid, sign=False)
case("unknown-op", "Frobnicate", b"{{}}")
case("not-json", "DescribeKey", b"{{nope")
case("wrong-type", "DescribeKey", b'{{"KeyId": 5}}')
case("missing-member", "DescribeKey", b"{{}}")
case("bad-base64", "Decrypt", b'{{"CiphertextBlob": "!!!"}}')
case("no-such-key", "DescribeKey", b'{{"KeyId": "alias/none"}}')
case("oversized", "Encrypt", b'{{"KeyId": "k", "Plaintext": "' + b"A" * (300 << 10) + b'"}}')
"#
    );
    let out = ok(&s.python(&creds, &script));
    for (case, status, code) in [
        ("good", "200", "ok"),
        ("wrong-secret", "400", "InvalidSignatureException"),
        ("unknown-key", "400", "UnrecognizedClientException"),
        (
            "skewed-past",
            "400",
            "InvalidSignatureException Signature expired",
        ),
        (
            "skewed-future",
            "400",
            "InvalidSignatureException Signature expired",
        ),
        ("small-skew", "200", "ok"),
        ("tampered-body", "400", "InvalidSignatureException"),
        ("unsigned", "400", "MissingAuthenticationTokenException"),
        ("unknown-op", "400", "UnknownOperationException"),
        ("not-json", "400", "SerializationException"),
        ("wrong-type", "400", "SerializationException"),
        ("missing-member", "400", "ValidationException"),
        ("bad-base64", "400", "SerializationException"),
        ("no-such-key", "400", "NotFoundException"),
        ("oversized", "413", "ValidationException"),
    ] {
        let want = format!("{case} {status} {code}");
        assert!(
            out.lines().any(|l| l.starts_with(&want)),
            "missing {want:?} in:\n{out}"
        );
    }
    // Garbage on the socket gets an HTTP error, and the server goes on.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    std::io::Write::write_all(&mut c, b"\x16\x03\x01 not http\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut c, &mut reply);
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    let out = ok(&s.python(
        &creds,
        &format!("{RAW}\ncase('after', 'ListKeys', b'{{}}')"),
    ));
    assert!(out.starts_with("after 200 ok"), "{out}");
}

#[test]
fn boto3_data_plane_and_access_keys_that_change_while_serving() {
    let s = Server::start(&[]);
    let root = s.access_key("uid:0");
    let blob = s.dir.path().join("dk.blob");
    let out = ok(&s.python(
        &root,
        &r#"
import boto3, botocore, os
c = boto3.client("kms", endpoint_url=os.environ["ENDPOINT"], region_name="eu-central-1")
k = os.environ["KEY_ID"]
dk = c.generate_data_key(KeyId=k, KeySpec="AES_256", EncryptionContext={"path": "a/b"})
assert len(dk["Plaintext"]) == 32
back = c.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"path": "a/b"})
assert back["Plaintext"] == dk["Plaintext"] and back["KeyId"].endswith(k)
try:
    c.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"path": "a/c"})
except botocore.exceptions.ClientError as e:
    print("moved", e.response["Error"]["Code"])
c.create_grant(KeyId=k, GranteePrincipal="uid:65534", Operations=["Decrypt"])
open(os.environ["BLOB"], "wb").write(dk["CiphertextBlob"])
print("ok")
"#
        .replace(
            "os.environ[\"BLOB\"]",
            &format!("{:?}", blob.display().to_string()),
        ),
    ));
    assert!(
        out.contains("moved InvalidCiphertextException") && out.ends_with("ok\n"),
        "{out}"
    );
    // A key made while the server runs works at once and acts as its
    // principal: uid 65534 may Decrypt (the grant) but not Encrypt.
    let nobody = s.access_key("uid:65534");
    let script = r#"
import boto3, botocore, os
c = boto3.client("kms", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                 config=botocore.config.Config(retries={"total_max_attempts": 1}))
blob = open(os.environ["BLOB"], "rb").read()
def code(f, **a):
    try:
        f(**a); return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
print("decrypt", code(c.decrypt, CiphertextBlob=blob, EncryptionContext={"path": "a/b"}))
print("encrypt", code(c.encrypt, KeyId=os.environ["KEY_ID"], Plaintext=b"x"))
"#;
    let run = |creds| {
        s.python(
            creds,
            &script.replace(
                "os.environ[\"BLOB\"]",
                &format!("{:?}", blob.display().to_string()),
            ),
        )
    };
    let out = ok(&run(&nobody));
    assert!(
        out.contains("decrypt ok") && out.contains("encrypt AccessDeniedException"),
        "{out}"
    );
    let nobody_records: Vec<_> = s
        .audit()
        .into_iter()
        .filter(|r| r["userIdentity"]["accessKeyId"] == nobody.0.as_str())
        .collect();
    assert_eq!(nobody_records.len(), 2, "{nobody_records:?}");
    assert_eq!(nobody_records[0]["userIdentity"]["uid"], 65534);
    assert_eq!(nobody_records[1]["errorCode"], "AccessDeniedException");
    // Deleted while serving: refused from the next request on.
    ok(&s.cli(&["kms", "delete-access-key", "--access-key-id", &nobody.0]));
    let out = ok(&run(&nobody));
    assert!(out.contains("decrypt UnrecognizedClientException"), "{out}");
    let listed = ok(&s.cli(&["kms", "list-access-keys"]));
    assert!(
        listed.contains(&root.0) && !listed.contains(&nobody.0),
        "{listed}"
    );
    assert!(!listed.contains("SecretAccessKey"), "{listed}");
}

#[test]
fn unix_socket_callers_are_who_the_kernel_says_they_are() {
    let s = Server::start(&[]);
    common::ensure_users(&[], &[("kmsfs-sock", &[])]);
    let _ = std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let req = |who: &str| {
        let curl = format!(
            "curl -s --unix-socket {} -H 'X-Amz-Target: TrentService.GenerateRandom' -H 'Content-Type: application/x-amz-json-1.1' -d '{{\"NumberOfBytes\": 8}}' http://localhost/ ; echo; curl -s --unix-socket {} -H 'X-Amz-Target: TrentService.Encrypt' -d '{{\"KeyId\": \"{}\", \"Plaintext\": \"eA==\"}}' http://localhost/",
            s.socket.display(),
            s.socket.display(),
            s.key_id()
        );
        if who == "root" {
            common::sh_ok(&curl)
        } else {
            common::as_user(who, &curl).unwrap()
        }
    };
    let root = req("root");
    assert!(
        root.contains("\"Plaintext\"") && root.contains("\"CiphertextBlob\""),
        "{root}"
    );
    let user = req("kmsfs-sock");
    assert!(user.contains("\"Plaintext\""), "{user}");
    assert!(
        user.contains("AccessDeniedException"),
        "another user may not use root's key: {user}"
    );
    let uid: u32 = common::sh_ok("id -u kmsfs-sock").trim().parse().unwrap();
    let denied = s
        .audit()
        .into_iter()
        .find(|r| r["errorCode"] == "AccessDeniedException")
        .expect("the refusal is audited");
    assert_eq!(denied["userIdentity"]["uid"], uid);
    assert_eq!(denied["sourceIPAddress"], "unix");
}

#[test]
fn many_clients_past_the_rate_get_throttled_and_no_audit_record_is_lost() {
    // A rate far below what 16 clients send even from a loaded debug run
    // (boto3 manages a few hundred calls a second here), so that throttling
    // is certain, not a race.
    let s = Server::start(&["--max-rate", "20"]);
    let creds = s.access_key("uid:0");
    let out = ok(&s.python(
        &creds,
        r#"
import boto3, botocore, os, threading, collections
cfg = botocore.config.Config(retries={"total_max_attempts": 1}, max_pool_connections=32)
counts = collections.Counter()
lock = threading.Lock()
def worker():
    c = boto3.session.Session().client("kms", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1", config=cfg)
    for i in range(30):
        try:
            c.encrypt(KeyId=os.environ["KEY_ID"], Plaintext=b"p", EncryptionContext={"n": str(i)})
            r = "ok"
        except botocore.exceptions.ClientError as e:
            r = e.response["Error"]["Code"]
        with lock:
            counts[r] += 1
ts = [threading.Thread(target=worker) for _ in range(16)]
[t.start() for t in ts]
[t.join() for t in ts]
print(counts["ok"], counts["ThrottlingException"], sum(counts.values()))
"#,
    ));
    let n: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (okc, throttled, total) = (n[0], n[1], n[2]);
    assert_eq!(total, 480, "{out}");
    assert_eq!(
        okc + throttled,
        total,
        "only successes and throttling: {out}"
    );
    assert!(
        throttled > 0,
        "16 clients past 20 requests/s were never throttled: {out}"
    );
    assert!(okc >= 20, "the burst of the rate is served: {out}");
    let encrypts = s
        .audit()
        .into_iter()
        .filter(|r| r["eventName"] == "Encrypt" && r["userIdentity"]["invokedBy"] == "api")
        .count() as u64;
    assert_eq!(encrypts, okc, "every served Encrypt has its audit record");
}

#[test]
fn kmsfs_kms_with_an_endpoint_url_manages_a_remote_kms() {
    let s = Server::start(&[]);
    let creds = s.access_key("uid:0");
    let out = ok(&s.bash(
        &creds,
        r#"
r() { "$KMSFS_BIN" kms --endpoint-url "$ENDPOINT" "$@"; }
K=$(r create-key --description remote --query KeyMetadata.KeyId --output text)
B=$(r encrypt --key-id "$K" --plaintext aGVsbG8= --encryption-context who=cli --query CiphertextBlob --output text)
echo "plain $(r decrypt --ciphertext-blob "$B" --encryption-context who=cli --query Plaintext --output text)"
r disable-key --key-id "$K"
r encrypt --key-id "$K" --plaintext aGk= 2>&1 | head -1 || true
echo "rc $(r describe-key --key-id alias/none >/dev/null 2>&1; echo $?)"
AWS_SECRET_ACCESS_KEY=wrong r list-keys 2>&1 || true
r create-access-key --principal uid:0 2>&1 || true
"#,
    ));
    assert!(out.contains("plain aGVsbG8="), "{out}");
    assert!(
        out.contains("An error occurred (DisabledException) when calling the Encrypt operation"),
        "{out}"
    );
    assert!(out.contains("rc 254"), "{out}");
    assert!(
        out.contains("(InvalidSignatureException) when calling the ListKeys operation"),
        "{out}"
    );
    assert!(
        out.contains("CreateAccessKey is not an operation of the AWS KMS API"),
        "{out}"
    );
    // The key was made in the server's keystore, as its access key's principal.
    let made = s
        .audit()
        .into_iter()
        .find(|r| r["eventName"] == "CreateKey" && r["userIdentity"]["invokedBy"] == "api")
        .expect("CreateKey through the API is audited");
    assert!(
        made["userAgent"].as_str().unwrap().starts_with("kmsfs/"),
        "{made}"
    );
}

#[test]
fn the_api_is_served_over_tls_to_the_aws_cli_boto3_and_kmsfs() {
    let (s, ca) = Server::start_tls();
    assert!(s.url().starts_with("https://"), "{}", s.url());
    let creds = s.access_key("uid:0");
    let out = ok(&s.bash(
        &creds,
        &format!(
            r#"
CA={ca}
echo "cli $(aws kms list-keys --endpoint-url "$ENDPOINT" --ca-bundle "$CA" --query 'length(Keys)' --output text)"
aws kms list-keys --endpoint-url "$ENDPOINT" 2>&1 | grep -o 'CERTIFICATE_VERIFY_FAILED' | head -1 || true
echo "kmsfs $("$KMSFS_BIN" kms --endpoint-url "$ENDPOINT" --ca-bundle "$CA" describe-key --key-id "$KEY_ID" --query KeyMetadata.KeyState --output text)"
"$KMSFS_BIN" kms --endpoint-url "$ENDPOINT" list-keys 2>&1 | head -1 || true
python -c "
import boto3, os
c = boto3.client('kms', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1', verify='$CA')
print('boto3', c.generate_random(NumberOfBytes=16)['Plaintext'].__len__())
"
# Plain HTTP to the TLS port gets no answer it could take for one.
curl -s -m 5 -o /dev/null -w 'plain %{{http_code}}\n' -X POST "http://127.0.0.1:{port}/" || echo "plain refused"
"#,
            ca = ca.display(),
            port = s.port
        ),
    ));
    for want in [
        "cli 1",
        "CERTIFICATE_VERIFY_FAILED",
        "kmsfs Enabled",
        "boto3 16",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        out.contains("UnknownIssuer") || out.contains("certificate"),
        "kmsfs without the CA refuses the certificate:\n{out}"
    );
    assert!(
        out.contains("plain 000") || out.contains("plain refused"),
        "{out}"
    );
}

#[test]
fn iam_principals_in_policies_and_grants_name_access_keys() {
    let s = Server::start(&[]);
    let root = s.access_key("uid:0");
    let meta = ok(&s.cli(&["kms", "describe-key", "--key-id", &s.key_id()]));
    let account =
        serde_json::from_str::<serde_json::Value>(&meta).unwrap()["KeyMetadata"]["AWSAccountId"]
            .as_str()
            .unwrap()
            .to_string();
    let alice = s.access_key(&format!("arn:kmsfs:iam::{account}:user/alice"));
    let app = s.access_key(&format!("arn:kmsfs:iam::{account}:role/app"));
    let o = s.cli(&[
        "kms",
        "create-access-key",
        "--principal",
        "arn:kmsfs:iam::999988887777:user/x",
    ]);
    assert!(!o.status.success(), "another account's identity is refused");
    // A policy as AWS's documentation writes it: the account root for
    // administration, one IAM user for Decrypt; and a grant to a role.
    let script = format!(
        r#"
import boto3, botocore, json, os
def client():
    return boto3.session.Session().client("kms", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
        config=botocore.config.Config(retries={{"total_max_attempts": 1}}))
def code(f, **a):
    try:
        f(**a); return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
mode = os.environ["MODE"]
c = client()
if mode == "setup":
    k = c.create_key(Description="iam", Policy=json.dumps({{"Version": "2012-10-17", "Statement": [
        {{"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::{account}:root"}},
          "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*", "kms:List*", "kms:Encrypt", "kms:CreateGrant", "kms:RevokeGrant"], "Resource": "*"}},
        {{"Sid": "Alice decrypts", "Effect": "Allow", "Principal": {{"AWS": ["arn:aws:iam::{account}:user/alice"]}},
          "Action": "kms:Decrypt", "Resource": "*"}}]}}))["KeyMetadata"]["KeyId"]
    blob = c.encrypt(KeyId=k, Plaintext=b"secret")["CiphertextBlob"]
    c.create_grant(KeyId=k, GranteePrincipal="arn:aws:iam::{account}:role/app", Operations=["GenerateDataKey"])
    open(os.environ["OUT"], "w").write(json.dumps({{"k": k, "blob": blob.hex()}}))
else:
    d = json.load(open(os.environ["OUT"]))
    print(mode, "describe", code(c.describe_key, KeyId=d["k"]))
    print(mode, "decrypt", code(c.decrypt, CiphertextBlob=bytes.fromhex(d["blob"])))
    print(mode, "datakey", code(c.generate_data_key, KeyId=d["k"], KeySpec="AES_256"))
"#
    );
    let out_file = s.dir.path().join("iam.json");
    let run = |creds: &(String, String), mode: &str| {
        let mut c = std::process::Command::new(common::serve::pyenv().join("bin/python"));
        c.arg("-c")
            .arg(&script)
            .env("MODE", mode)
            .env("OUT", &out_file);
        c.env("AWS_ACCESS_KEY_ID", &creds.0)
            .env("AWS_SECRET_ACCESS_KEY", &creds.1)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("ENDPOINT", s.url());
        ok(&common::run_timeout(&mut c, 120))
    };
    run(&root, "setup");
    let out = run(&alice, "alice") + &run(&app, "app") + &run(&root, "root");
    for want in [
        "alice describe ok",
        "alice decrypt ok",
        "alice datakey AccessDeniedException",
        "app describe ok",
        "app decrypt AccessDeniedException",
        "app datakey ok",
        "root describe ok",
        "root decrypt AccessDeniedException",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let rec = s
        .audit()
        .into_iter()
        .find(|r| r["userIdentity"]["accessKeyId"] == alice.0.as_str())
        .unwrap();
    assert_eq!(
        rec["userIdentity"]["principalId"],
        format!("arn:kmsfs:iam::{account}:user/alice").as_str()
    );
}
