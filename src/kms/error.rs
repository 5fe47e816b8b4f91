//! Errors with AWS KMS's exception names, so a user who knows `aws kms` can read
//! them, plus a sentence that says what went wrong and what to do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AccessDeniedException,
    AlreadyExistsException,
    DisabledException,
    /// A DryRun request would have succeeded (AWS's name for it).
    DryRunOperationException,
    ExpiredImportTokenException,
    IncorrectKeyException,
    IncorrectKeyMaterialException,
    InvalidAliasNameException,
    InvalidArnException,
    InvalidCiphertextException,
    InvalidGrantIdException,
    InvalidGrantTokenException,
    InvalidImportTokenException,
    InvalidKeyUsageException,
    InvalidMarkerException,
    KMSInternalException,
    KMSInvalidStateException,
    LimitExceededException,
    MalformedPolicyDocumentException,
    NotFoundException,
    TagException,
    UnsupportedOperationException,
    ValidationException,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            AccessDeniedException => "AccessDeniedException",
            AlreadyExistsException => "AlreadyExistsException",
            DisabledException => "DisabledException",
            DryRunOperationException => "DryRunOperationException",
            ExpiredImportTokenException => "ExpiredImportTokenException",
            IncorrectKeyException => "IncorrectKeyException",
            IncorrectKeyMaterialException => "IncorrectKeyMaterialException",
            InvalidAliasNameException => "InvalidAliasNameException",
            InvalidArnException => "InvalidArnException",
            InvalidCiphertextException => "InvalidCiphertextException",
            InvalidGrantIdException => "InvalidGrantIdException",
            InvalidGrantTokenException => "InvalidGrantTokenException",
            InvalidImportTokenException => "InvalidImportTokenException",
            InvalidKeyUsageException => "InvalidKeyUsageException",
            InvalidMarkerException => "InvalidMarkerException",
            KMSInternalException => "KMSInternalException",
            KMSInvalidStateException => "KMSInvalidStateException",
            LimitExceededException => "LimitExceededException",
            MalformedPolicyDocumentException => "MalformedPolicyDocumentException",
            NotFoundException => "NotFoundException",
            TagException => "TagException",
            UnsupportedOperationException => "UnsupportedOperationException",
            ValidationException => "ValidationException",
        }
    }
}

impl ErrorCode {
    /// Every code, for parsing a remote KMS's `__type`.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::AccessDeniedException,
        ErrorCode::AlreadyExistsException,
        ErrorCode::DisabledException,
        ErrorCode::DryRunOperationException,
        ErrorCode::ExpiredImportTokenException,
        ErrorCode::IncorrectKeyException,
        ErrorCode::IncorrectKeyMaterialException,
        ErrorCode::InvalidAliasNameException,
        ErrorCode::InvalidArnException,
        ErrorCode::InvalidCiphertextException,
        ErrorCode::InvalidGrantIdException,
        ErrorCode::InvalidGrantTokenException,
        ErrorCode::InvalidImportTokenException,
        ErrorCode::InvalidKeyUsageException,
        ErrorCode::InvalidMarkerException,
        ErrorCode::KMSInternalException,
        ErrorCode::KMSInvalidStateException,
        ErrorCode::LimitExceededException,
        ErrorCode::MalformedPolicyDocumentException,
        ErrorCode::NotFoundException,
        ErrorCode::TagException,
        ErrorCode::UnsupportedOperationException,
        ErrorCode::ValidationException,
    ];

    /// The code AWS names `name` (a `__type`, with or without a
    /// `namespace#` prefix); `None` for one this KMS does not model.
    pub fn parse(name: &str) -> Option<ErrorCode> {
        let name = name.rsplit('#').next().unwrap_or(name);
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned by a KMS operation. The message never contains key material
/// or plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    pub code: ErrorCode,
    pub message: String,
}

impl KmsError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        KmsError {
            code,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationException, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFoundException, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::KMSInternalException, message)
    }
    pub fn invalid_ciphertext(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidCiphertextException, message)
    }
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AccessDeniedException, message)
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for KmsError {}

pub type KmsResult<T> = Result<T, KmsError>;
