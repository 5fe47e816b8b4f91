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

/// A `--query` path: `Field`, `A.B`, `List[0].Field`.
pub fn query(v: &Value, q: &str) -> Result<Value, String> {
    let mut cur = v.clone();
    for seg in q.split('.') {
        let (name, idx) = match seg.split_once('[') {
            Some((n, rest)) => {
                let i: usize = rest
                    .strip_suffix(']')
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("--query: bad index in {seg:?}"))?;
                (n, Some(i))
            }
            None => (seg, None),
        };
        if !name.is_empty() {
            cur = cur.get(name).cloned().unwrap_or(Value::Null);
        }
        if let Some(i) = idx {
            cur = cur.get(i).cloned().unwrap_or(Value::Null);
        }
    }
    Ok(cur)
}

/// Prints like the AWS CLI: 4-space-indented JSON, or tab-separated text.
pub fn render(v: &Value, output: &str) -> String {
    match output {
        "text" => text(v),
        _ => {
            let mut buf = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(v, &mut ser).expect("JSON value serialises");
            String::from_utf8(buf).expect("JSON is UTF-8")
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join("\t"),
        Value::Object(m) => m.values().map(text).collect::<Vec<_>>().join("\t"),
        other => other.to_string(),
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
        assert_eq!(render(&json!("x"), "text"), "x");
        assert_eq!(render(&json!({"A": 1}), "json"), "{\n    \"A\": 1\n}");
    }
}
