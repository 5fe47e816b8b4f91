//! The AWS CLI's argument and output conventions: `fileb://` and `file://`
//! parameters, base64 blobs, shorthand lists, `--query` and `--output`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

/// Largest blob parameter read from a file; KMS inputs are at most a few KiB.
const MAX_PARAM_FILE: u64 = 1 << 20;

fn read_param_file(path: &str, flag: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{flag}: cannot read {path}: {e}"))?;
    if meta.len() > MAX_PARAM_FILE {
        return Err(format!(
            "{flag}: {path} is {} bytes, more than any KMS request takes",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{flag}: cannot read {path}: {e}"))
}

/// A binary parameter: `fileb://PATH` is raw bytes, anything else is base64
/// (as in AWS CLI v2).
pub fn blob_arg(v: &str, flag: &str) -> Result<Vec<u8>, String> {
    if let Some(p) = v.strip_prefix("fileb://") {
        return read_param_file(p, flag);
    }
    if let Some(p) = v.strip_prefix("file://") {
        let text = read_param_file(p, flag)?;
        return B64
            .decode(String::from_utf8_lossy(&text).trim())
            .map_err(|_| {
                format!("{flag}: {p} is not base64; use fileb://{p} to pass its raw bytes")
            });
    }
    B64.decode(v.trim()).map_err(|_| {
        format!(
            "{flag} takes base64, as in AWS CLI v2; use fileb://FILE to pass raw bytes from a file"
        )
    })
}

/// A text parameter: `file://PATH` reads the file, anything else is literal.
pub fn text_arg(v: &str, flag: &str) -> Result<String, String> {
    match v.strip_prefix("file://") {
        Some(p) => String::from_utf8(read_param_file(p, flag)?)
            .map_err(|_| format!("{flag}: {p} is not UTF-8 text")),
        None => Ok(v.to_string()),
    }
}

/// A timestamp parameter, as clap's value parser: a bad one is a usage error.
pub fn time_arg(v: &str) -> Result<i64, String> {
    crate::kms::clock::parse_time(v).ok_or_else(|| {
        "expected an RFC 3339 time (2026-01-31T12:00:00Z, or with a +01:00 offset), \
         a date (2026-01-31, midnight UTC) or Unix seconds"
            .into()
    })
}

/// `audit show --since/--until`: `time_arg`'s forms, or one relative to
/// now as journalctl takes them (`-1h`, `2h ago`, `today`, `yesterday`).
pub fn when_arg(v: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::kms::clock::parse_relative(v, now)
        .or_else(|| crate::kms::clock::parse_time(v))
        .ok_or_else(|| {
            "expected an RFC 3339 time (2026-01-31T12:00:00Z), a date (2026-01-31, midnight UTC), \
             Unix seconds, or a time relative to now: -1h, +30m, -2d, \"2h ago\", now, today, yesterday"
                .into()
        })
}

/// Tags as `TagKey=k,TagValue=v` shorthand (one per argument) or a JSON list.
pub fn parse_tags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    for a in args {
        let a = text_arg(a, "--tags")?;
        let t = a.trim();
        if t.starts_with('[') || t.starts_with('{') {
            let v: Value =
                serde_json::from_str(t).map_err(|e| format!("--tags: malformed JSON: {e}"))?;
            let items = match v {
                Value::Array(a) => a,
                o => vec![o],
            };
            for i in items {
                let k = i["TagKey"]
                    .as_str()
                    .ok_or("--tags: each tag needs a TagKey string")?;
                let v = i["TagValue"]
                    .as_str()
                    .ok_or("--tags: each tag needs a TagValue string")?;
                out.push((k.to_string(), v.to_string()));
            }
            continue;
        }
        let mut k = None;
        let mut v = None;
        for part in t.split(',') {
            match part.split_once('=') {
                Some(("TagKey", x)) => k = Some(x.to_string()),
                Some(("TagValue", x)) => v = Some(x.to_string()),
                _ => {
                    return Err(format!(
                        "--tags: {part:?} is not TagKey=... or TagValue=..."
                    ));
                }
            }
        }
        match (k, v) {
            (Some(k), Some(v)) => out.push((k, v)),
            _ => return Err(format!("--tags: {t:?} needs both TagKey= and TagValue=")),
        }
    }
    Ok(out)
}

/// A `--query` that does not compile is a usage error before anything is
/// sent, as in the AWS CLI: not after a key was made.
pub fn check_query(q: Option<&str>) -> Result<(), String> {
    match q.map(jmespath::compile) {
        Some(Err(e)) => Err(format!(
            "--query {:?} is not a JMESPath expression: {e}",
            q.unwrap_or_default()
        )),
        _ => Ok(()),
    }
}

/// `--query`: a JMESPath expression over the response, as the AWS CLI
/// takes it (`KeyMetadata.KeyId`, `Keys[].KeyId`, `Aliases[?TargetKeyId=='k'].AliasName`,
/// `length(Keys)`), through the JMESPath project's own Rust implementation.
pub fn query(v: &Value, q: &str) -> Result<Value, String> {
    let expr = jmespath::compile(q)
        .map_err(|e| format!("--query {q:?} is not a JMESPath expression: {e}"))?;
    let data = jmespath::Variable::from_serializable(v).map_err(|e| format!("--query: {e}"))?;
    let found = expr
        .search(data)
        .map_err(|e| format!("--query {q:?}: {e}"))?;
    serde_json::to_value(&*found).map_err(|e| format!("--query: {e}"))
}

/// Prints like the AWS CLI: 4-space-indented JSON, or tab-separated text.
pub fn render(v: &Value, output: &str) -> String {
    match output {
        "text" => {
            let mut out = String::new();
            text(v, None, None, &mut out);
            out.pop(); // the caller's println! ends the last line
            out
        }
        _ => {
            let mut buf = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(v, &mut ser).expect("JSON value serialises");
            String::from_utf8(buf).expect("JSON is UTF-8")
        }
    }
}

/// A scalar as the AWS CLI (Python's `str`) prints it.
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_container(v: &Value) -> bool {
    v.is_object() || v.is_array()
}

// The AWS CLI's text format (awscli/text.py), so that scripts written for
// `aws kms ... --output text` read the same lines: an object's scalars on one
// line in key order, after the upper-cased name of the list or object holding
// it; each element of a list of objects on its own line, with the columns
// every element's scalar keys; nested lists and objects on lines of their own.
fn text(v: &Value, name: Option<&str>, columns: Option<&[&str]>, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut scalars = vec![];
            let mut nested = vec![];
            match columns {
                None => {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    for k in keys {
                        if is_container(&m[k]) {
                            nested.push((k.as_str(), &m[k]));
                        } else {
                            scalars.push(scalar(&m[k]));
                        }
                    }
                }
                Some(cols) => {
                    for c in cols {
                        scalars.push(m.get(*c).map(scalar).unwrap_or_default());
                    }
                    let mut rest: Vec<&String> =
                        m.keys().filter(|k| !cols.contains(&k.as_str())).collect();
                    rest.sort();
                    nested.extend(rest.into_iter().map(|k| (k.as_str(), &m[k])));
                }
            }
            if !scalars.is_empty() {
                if let Some(n) = name {
                    scalars.insert(0, n.to_uppercase());
                }
                out.push_str(&scalars.join("\t"));
                out.push('\n');
            }
            for (k, v) in nested {
                text(v, Some(k), None, out);
            }
        }
        Value::Array(a) if a.iter().any(Value::is_object) => {
            let mut cols: Vec<&str> = a
                .iter()
                .filter_map(Value::as_object)
                .flat_map(|m| m.iter().filter(|(_, v)| !is_container(v)))
                .map(|(k, _)| k.as_str())
                .collect();
            cols.sort();
            cols.dedup();
            for e in a {
                text(e, name, Some(&cols), out);
            }
        }
        Value::Array(a) => {
            let (nested, scalars): (Vec<&Value>, Vec<&Value>) =
                a.iter().partition(|e| e.is_array());
            if !scalars.is_empty() {
                match name {
                    Some(n) => {
                        for e in scalars {
                            out.push_str(&format!("{}\t{}\n", n.to_uppercase(), scalar(e)));
                        }
                    }
                    None => {
                        let line: Vec<String> = scalars.into_iter().map(scalar).collect();
                        out.push_str(&line.join("\t"));
                        out.push('\n');
                    }
                }
            }
            for e in nested {
                text(e, name, None, out);
            }
        }
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blobs() {
        assert_eq!(blob_arg("aGk=", "--x").unwrap(), b"hi");
        assert!(
            blob_arg("not base64!", "--x")
                .unwrap_err()
                .contains("fileb://")
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"\x00\x01raw").unwrap();
        assert_eq!(
            blob_arg(&format!("fileb://{}", p.display()), "--x").unwrap(),
            b"\x00\x01raw"
        );
        assert!(
            blob_arg("fileb:///nonexistent/x", "--x")
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn tags() {
        let t = parse_tags(&[
            "TagKey=team,TagValue=ops".into(),
            r#"[{"TagKey":"a","TagValue":"b"}]"#.into(),
        ])
        .unwrap();
        assert_eq!(
            t,
            vec![("team".into(), "ops".into()), ("a".into(), "b".into())]
        );
        assert!(parse_tags(&["TagKey=x".into()]).is_err());
        assert!(parse_tags(&["[{".into()]).is_err());
    }

    #[test]
    fn query_and_render() {
        let v = json!({"KeyMetadata": {"KeyId": "k"}, "Keys": [{"KeyId": "a"}, {"KeyId": "b"}]});
        assert_eq!(query(&v, "KeyMetadata.KeyId").unwrap(), json!("k"));
        assert_eq!(query(&v, "Keys[1].KeyId").unwrap(), json!("b"));
        // JMESPath as the AWS CLI takes it: projections, filters, functions.
        assert_eq!(query(&v, "Keys[].KeyId").unwrap(), json!(["a", "b"]));
        assert_eq!(
            query(&v, "Keys[?KeyId=='b'] | [0].KeyId").unwrap(),
            json!("b")
        );
        assert_eq!(query(&v, "length(Keys)").unwrap(), json!(2));
        assert_eq!(query(&v, "Nothing.Here").unwrap(), Value::Null);
        assert!(
            query(&v, "Keys[?")
                .unwrap_err()
                .starts_with("--query \"Keys[?\" is not a JMESPath expression: ")
        );
        assert_eq!(render(&json!("x"), "text"), "x");
        assert_eq!(render(&json!({"A": 1}), "json"), "{\n    \"A\": 1\n}");
    }

    #[test]
    fn text_output_has_a_line_per_list_element_as_the_aws_cli() {
        let keys = json!({"Keys": [{"KeyId": "a", "KeyArn": "arn/a"}, {"KeyId": "b", "KeyArn": "arn/b"}], "Truncated": false});
        assert_eq!(
            render(&keys, "text"),
            "False\nKEYS\tarn/a\ta\nKEYS\tarn/b\tb"
        );
        // Columns are every element's scalar keys (empty where one lacks it);
        // lists inside an element get lines of their own after it.
        let grants = json!({"Grants": [
            {"GrantId": "g1", "Operations": ["Decrypt", "Encrypt"]},
            {"Name": "n", "GrantId": "g2", "Constraints": {"EncryptionContextSubset": {"k": "v"}}}
        ]});
        assert_eq!(
            render(&grants, "text"),
            "GRANTS\tg1\t\nOPERATIONS\tDecrypt\nOPERATIONS\tEncrypt\nGRANTS\tg2\tn\nENCRYPTIONCONTEXTSUBSET\tv"
        );
        assert_eq!(render(&json!(["a", "b"]), "text"), "a\tb");
        assert_eq!(
            render(
                &json!({"X": null, "N": 7, "KeyRotationEnabled": true}),
                "text"
            ),
            "True\t7\tNone"
        );
        assert_eq!(render(&json!({"Aliases": []}), "text"), "");
    }

    #[test]
    fn times() {
        assert_eq!(time_arg("1970-01-02").unwrap(), 86_400);
        assert_eq!(time_arg("1970-01-01T00:01:00Z").unwrap(), 60);
        assert!(time_arg("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
