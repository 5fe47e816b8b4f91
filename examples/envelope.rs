//! Envelope encryption with the kmsfs library: one data key per file from
//! GenerateDataKey, the file encrypted in 64 KiB chunks with AES-256-GCM, the
//! wrapped data key stored in front. Decrypting asks the KMS to unwrap it.
//!
//!     cargo run --release --example envelope                # self-contained demo
//!     cargo run --release --example envelope -- encrypt IN OUT
//!     cargo run --release --example envelope -- decrypt IN OUT
//!
//! With arguments it uses the KMS home in $KMSFS_HOME (or the default) opened
//! with the key file in $KMSFS_KEY_FILE, and the key `alias/envelope-example`
//! (created on first use).
//!
//! Output layout: "KMSENV1\0", u32 blob length, blob, then per chunk
//! nonce(12) || ciphertext || tag(16), the chunk index and a last-chunk flag
//! bound as AAD so chunks cannot be reordered, dropped or truncated.

use kmsfs::crypto::{AeadKey, Key256};
use kmsfs::kms::{
    Caller, CreateKeyRequest, DataKeySpec, EncryptionContext, Kms, KmsHome, Options, RootSecret,
    Via,
};
use std::io::{Read, Write};

const MAGIC: &[u8; 8] = b"KMSENV1\0";
const CHUNK: usize = 64 * 1024;
const ALIAS: &str = "alias/envelope-example";

fn chunk_aad(index: u64, last: bool) -> [u8; 9] {
    let mut a = [0u8; 9];
    a[..8].copy_from_slice(&index.to_be_bytes());
    a[8] = last as u8;
    a
}

fn context(name: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([("file", name)])
}

fn encrypt(
    kms: &Kms,
    input: &mut impl Read,
    out: &mut impl Write,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let caller = Caller::this_process(Via::Api);
    let dk = kms.generate_data_key(
        &caller,
        ALIAS,
        &DataKeySpec::aes_256(),
        &context(name),
        true,
    )?;
    let key = AeadKey::new(
        &Key256::from_slice(dk.plaintext.as_ref().expect("plaintext").as_bytes())
            .expect("32 bytes"),
    );
    out.write_all(MAGIC)?;
    out.write_all(&(dk.ciphertext_blob.len() as u32).to_be_bytes())?;
    out.write_all(&dk.ciphertext_blob)?;
    let mut buf = vec![0u8; CHUNK];
    let mut next = vec![0u8; CHUNK];
    let mut n = read_full(input, &mut buf)?;
    let mut index = 0u64;
    loop {
        let m = if n == CHUNK {
            read_full(input, &mut next)?
        } else {
            0
        };
        let last = m == 0;
        let nonce = kmsfs::crypto::random::array::<12>();
        out.write_all(&nonce)?;
        out.write_all(&key.seal(&nonce, &chunk_aad(index, last), &buf[..n]))?;
        if last {
            return Ok(());
        }
        std::mem::swap(&mut buf, &mut next);
        n = m;
        index += 1;
    }
}

fn decrypt(
    kms: &Kms,
    input: &mut impl Read,
    out: &mut impl Write,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let caller = Caller::this_process(Via::Api);
    let mut head = [0u8; 12];
    input.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err("not an envelope file".into());
    }
    let len = u32::from_be_bytes(head[8..].try_into()?) as usize;
    if len > kmsfs::kms::blob::MAX_BLOB_LEN {
        return Err("wrapped key is too long: not an envelope file".into());
    }
    let mut blob = vec![0u8; len];
    input.read_exact(&mut blob)?;
    let dk = kms.decrypt(&caller, &blob, &context(name), None, None)?;
    let key = AeadKey::new(
        &Key256::from_slice(dk.plaintext.as_bytes()).ok_or("data key is not 32 bytes")?,
    );
    let mut buf = vec![0u8; 12 + CHUNK + 16];
    let mut next = vec![0u8; 12 + CHUNK + 16];
    let mut n = read_full(input, &mut buf)?;
    let mut index = 0u64;
    loop {
        let m = if n == buf.len() {
            read_full(input, &mut next)?
        } else {
            0
        };
        let last = m == 0;
        if n < 28 {
            return Err("truncated envelope file".into());
        }
        let nonce: [u8; 12] = buf[..12].try_into()?;
        let plain = key
            .open(&nonce, &chunk_aad(index, last), &buf[12..n])
            .map_err(|_| {
                format!("chunk {index} failed authentication (modified, reordered or truncated)")
            })?;
        out.write_all(plain.as_bytes())?;
        if last {
            return Ok(());
        }
        std::mem::swap(&mut buf, &mut next);
        n = m;
        index += 1;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn ensure_key(kms: &Kms) -> Result<(), Box<dyn std::error::Error>> {
    let caller = Caller::this_process(Via::Api);
    if kms.describe_key(&caller, ALIAS).is_err() {
        let k = kms.create_key(
            &caller,
            CreateKeyRequest {
                description: "envelope example".into(),
                ..Default::default()
            },
        )?;
        kms.create_alias(&caller, ALIAS, &k.key_id)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, input, output] = args.as_slice() {
        let key_file = std::env::var("KMSFS_KEY_FILE")
            .map_err(|_| "set KMSFS_KEY_FILE to a 32-byte root key file")?;
        let key = Key256::from_slice(&std::fs::read(&key_file)?)
            .ok_or("the key file must hold 32 raw bytes")?;
        let kms = Kms::open(
            KmsHome::new(KmsHome::default_dir()?),
            &RootSecret::KeyFile(key),
            true,
            Options::default(),
        )?;
        ensure_key(&kms)?;
        let name = std::path::Path::new(input)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let mut r = std::io::BufReader::new(std::fs::File::open(input)?);
        let mut w = std::io::BufWriter::new(std::fs::File::create(output)?);
        match mode.as_str() {
            "encrypt" => encrypt(&kms, &mut r, &mut w, &name)?,
            "decrypt" => decrypt(&kms, &mut r, &mut w, name.trim_end_matches(".env"))?,
            _ => return Err("usage: envelope [encrypt|decrypt IN OUT]".into()),
        }
        return Ok(w.flush()?);
    }
    // Demo: an in-memory KMS, 5 MiB + a bit of random data, round trip, tamper check.
    let kms = Kms::in_memory();
    ensure_key(&kms)?;
    let data = kmsfs::crypto::SecretBytes::random(5 * 1024 * 1024 + 123);
    let mut sealed = Vec::new();
    encrypt(&kms, &mut data.as_bytes(), &mut sealed, "demo.bin")?;
    let mut back = Vec::new();
    decrypt(&kms, &mut sealed.as_slice(), &mut back, "demo.bin")?;
    assert_eq!(back, data.as_bytes());
    println!(
        "round trip of {} bytes through {} bytes of envelope: ok",
        data.len(),
        sealed.len()
    );
    let wrong_name = decrypt(&kms, &mut sealed.as_slice(), &mut Vec::new(), "other.bin");
    println!(
        "decrypting under another file name: {}",
        wrong_name.err().map(|e| e.to_string()).unwrap_or_default()
    );
    let mut cut = sealed.clone();
    cut.truncate(sealed.len() - CHUNK);
    let truncated = decrypt(&kms, &mut cut.as_slice(), &mut Vec::new(), "demo.bin");
    println!(
        "decrypting a truncated file: {}",
        truncated.err().map(|e| e.to_string()).unwrap_or_default()
    );
    Ok(())
}
