//! Files as documents: `PUT /documents/{asset_id}` with a file (a multipart form, or the raw
//! body with its media type). The API checks what it can tell at once (size, format, the
//! first bytes, UTF-8 for text formats), stores the file in the files bucket, then requests
//! one `document` job that names the object. The worker extracts, chunks and embeds it.

use poem_openapi::Multipart;
use poem_openapi::types::multipart::Upload;
use serde::Serialize;

use heimdex_domain::ids::{self, Target};
use heimdex_domain::jobs::{DocumentParams, FileSource, JobSpec};
use heimdex_domain::{AssetId, Metadata};
use heimdex_embed::ChunkOptions;
use heimdex_extract::Format;

use crate::AppState;
use crate::auth::Principal;
use crate::problem::ApiError;
use crate::routes::ingest::{ChunkRequest, DocumentAccepted, chunk_options};
use crate::routes::parse_ident;

/// The largest file a document may be.
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;
/// Room for a multipart form's envelope and fields around a file of [`MAX_FILE_BYTES`].
pub const MAX_FILE_BODY_BYTES: usize = MAX_FILE_BYTES + 256 * 1024;

/// A file sent as a multipart form.
#[derive(Multipart, Debug)]
pub struct FileForm {
    /// The file. Its format comes from the part's content type (`application/pdf`,
    /// `application/vnd.openxmlformats-officedocument.wordprocessingml.document`,
    /// `text/html`, `text/markdown`, `text/plain`), else from its file name's extension.
    pub file: Upload,
    /// The document's metadata, as a JSON object (see `PUT /documents/{asset_id}`'s JSON body).
    pub metadata: Option<String>,
    /// Model name (`minilm-l6-v2`, the default, or `mock`).
    pub model: Option<String>,
    /// Most tokens per chunk, 8–256 (default 256).
    pub max_tokens: Option<u32>,
    /// Tokens shared by neighbouring chunks (default 32).
    pub overlap: Option<u32>,
}

/// A file and how to index it, however it was sent.
pub struct FileUpload {
    pub bytes: Vec<u8>,
    /// The media type it was sent with (parameters allowed), if any.
    pub content_type: Option<String>,
    /// Its file name, if the client gave one.
    pub name: Option<String>,
    pub model: Option<String>,
    pub chunk: ChunkRequest,
    /// The metadata as sent: a JSON object, as text.
    pub metadata: Option<String>,
}

impl FileUpload {
    /// The upload a multipart form holds.
    pub async fn from_form(form: FileForm) -> Result<Self, ApiError> {
        let FileForm {
            file,
            metadata,
            model,
            max_tokens,
            overlap,
        } = form;
        let content_type = file.content_type().map(str::to_owned);
        let name = file.file_name().map(str::to_owned);
        let bytes = file.into_vec().await.map_err(ApiError::internal)?;
        Ok(Self {
            bytes,
            content_type,
            name,
            model,
            chunk: ChunkRequest {
                max_tokens,
                overlap,
            },
            metadata,
        })
    }
}

/// The options a file's version hashes besides its bytes.
#[derive(Serialize)]
struct FileVersionOptions<'a> {
    format: &'a str,
    model: &'a str,
    model_ver: &'a str,
    max_tokens: usize,
    overlap: usize,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    metadata: &'a Metadata,
}

/// Checks a file, stores it and submits its `document` job.
pub(crate) async fn submit_file(
    state: &AppState,
    principal: &Principal,
    asset_id: String,
    upload: FileUpload,
) -> Result<DocumentAccepted, ApiError> {
    let asset_id: AssetId = parse_ident("asset_id", asset_id)?;
    let metadata = match upload.metadata.as_deref().map(str::trim) {
        None | Some("") => Metadata::default(),
        Some(text) => serde_json::from_str(text)
            .map_err(|err| ApiError::Validation(format!("metadata is not JSON: {err}")))
            .and_then(|value| {
                Metadata::from_json(value)
                    .map_err(|err| ApiError::Validation(format!("metadata {err}")))
            })?,
    };
    let bytes = upload.bytes;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ApiError::TooLarge(format!(
            "the file is {} bytes; a document file may be at most {MAX_FILE_BYTES} (10 MiB)",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(ApiError::Validation("the file is empty".into()));
    }
    let format = format_of(
        upload.content_type.as_deref(),
        upload.name.as_deref(),
        &bytes,
    )?;
    check_content(format, &bytes)?;
    let options = chunk_options(upload.chunk)?;
    let (embedder, _) = state.model(upload.model.as_deref())?;
    let options = ChunkOptions {
        max_tokens: options
            .max_tokens
            .min(embedder.max_tokens() - embedder.special_tokens()),
        ..options
    };
    let version = ids::document_version(
        &bytes,
        &FileVersionOptions {
            format: format.as_str(),
            model: embedder.model(),
            model_ver: embedder.model_ver(),
            max_tokens: options.max_tokens,
            overlap: options.overlap,
            metadata: &metadata,
        },
    );
    let object = FileSource::object_name(principal.org_id, &asset_id, &version);
    state
        .files
        .put(&object, &bytes)
        .await
        .map_err(ApiError::nats)?;
    let generation = state
        .submitter
        .generation(principal, &[Target::Asset(asset_id.to_string())])
        .await?;
    let file = FileSource {
        object,
        sha256: ids::sha256_hex(&bytes),
        size: bytes.len() as u64,
        format: format.as_str().to_owned(),
        name: upload.name.filter(|name| !name.trim().is_empty()),
        max_tokens: options.max_tokens,
        overlap: options.overlap,
    };
    let spec = JobSpec::Document(DocumentParams {
        asset_id: asset_id.clone(),
        version: version.clone(),
        model: embedder.model().to_owned(),
        model_ver: embedder.model_ver().to_owned(),
        generation,
        chunks: Vec::new(),
        file: Some(file),
        metadata,
    });
    let submitted = state.submitter.submit(principal, spec).await?;
    Ok(DocumentAccepted {
        asset_id: asset_id.into_inner(),
        job_id: submitted.job_id,
        version,
        model: embedder.model().to_owned(),
        model_ver: embedder.model_ver().to_owned(),
        chunks: Vec::new(),
    })
}

/// The file's format: from its media type; for none (or `application/octet-stream`), from
/// its name's extension, else from its first bytes (PDF, DOCX). Anything else is 415.
fn format_of(
    content_type: Option<&str>,
    name: Option<&str>,
    bytes: &[u8],
) -> Result<Format, ApiError> {
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .filter(|ct| !ct.is_empty());
    match essence.as_deref() {
        None | Some("application/octet-stream") => name
            .and_then(|name| name.rsplit_once('.'))
            .and_then(|(_, ext)| Format::from_extension(ext))
            .or_else(|| sniff(bytes))
            .ok_or_else(|| {
                ApiError::UnsupportedMediaType(
                    "cannot tell the file's format: send it with its media type \
                     (application/pdf, application/vnd.openxmlformats-officedocument.\
                     wordprocessingml.document, text/html, text/markdown or text/plain)"
                        .into(),
                )
            }),
        Some(ct) => Format::from_content_type(ct).ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "{ct} is not a supported document type: send PDF (application/pdf), DOCX \
                 (application/vnd.openxmlformats-officedocument.wordprocessingml.document), \
                 HTML (text/html), Markdown (text/markdown) or plain text (text/plain)"
            ))
        }),
    }
}

/// PDF and DOCX (a zip container) by their first bytes.
fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"%PDF-") {
        Some(Format::Pdf)
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some(Format::Docx)
    } else {
        None
    }
}

/// What can be told of a file without parsing it: a PDF starts with its header (within its
/// first KiB, as readers allow), a DOCX is a zip container, and text formats are UTF-8. The
/// rest (encryption, damage, no text) the worker finds, and the job fails with the reason.
fn check_content(format: Format, bytes: &[u8]) -> Result<(), ApiError> {
    let invalid = |reason: &str| Err(ApiError::Validation(reason.to_owned()));
    match format {
        Format::Pdf => {
            let head = &bytes[..bytes.len().min(1024)];
            if !head.windows(5).any(|w| w == b"%PDF-") {
                return invalid("the file is not a PDF: it has no %PDF- header");
            }
        }
        Format::Docx => {
            if !bytes.starts_with(b"PK\x03\x04") {
                return invalid(
                    "the file is not a DOCX: a DOCX is a zip container (password-protected \
                     and legacy .doc files are not supported)",
                );
            }
        }
        Format::Html | Format::Markdown | Format::Text => {
            if let Err(err) = std::str::from_utf8(bytes) {
                return invalid(&format!(
                    "the file is not UTF-8 text (invalid bytes at offset {})",
                    err.valid_up_to()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(err: ApiError) -> &'static str {
        if matches!(err, ApiError::UnsupportedMediaType(_)) {
            "415"
        } else if matches!(err, ApiError::Validation(_)) {
            "422"
        } else {
            "other"
        }
    }

    #[test]
    fn the_format_comes_from_the_media_type_then_the_name_then_the_bytes() {
        let pdf = b"%PDF-1.7 ...";
        assert_eq!(
            format_of(Some("application/pdf"), None, pdf).ok(),
            Some(Format::Pdf)
        );
        assert_eq!(
            format_of(Some("Text/Plain; charset=utf-8"), None, b"hi").ok(),
            Some(Format::Text)
        );
        assert_eq!(
            format_of(Some("application/octet-stream"), Some("notes.MD"), b"# hi").ok(),
            Some(Format::Markdown)
        );
        assert_eq!(format_of(None, None, pdf).ok(), Some(Format::Pdf));
        assert_eq!(
            format_of(None, None, b"PK\x03\x04...").ok(),
            Some(Format::Docx)
        );
        assert_eq!(
            format_of(Some("image/png"), Some("a.pdf"), pdf)
                .map_err(status)
                .err(),
            Some("415")
        );
        assert_eq!(
            format_of(None, Some("a.exe"), b"MZ").map_err(status).err(),
            Some("415")
        );
    }

    #[test]
    fn what_can_be_told_at_once_is_422() {
        assert!(check_content(Format::Pdf, b"%PDF-1.4\n...").is_ok());
        assert!(check_content(Format::Pdf, b"\xef\xbb\xbf\n%PDF-1.4").is_ok());
        assert_eq!(
            check_content(Format::Pdf, &[0x13; 4096])
                .map_err(status)
                .err(),
            Some("422")
        );
        assert_eq!(
            check_content(Format::Docx, b"\xd0\xcf\x11\xe0")
                .map_err(status)
                .err(),
            Some("422")
        );
        assert_eq!(
            check_content(Format::Html, b"<p>\xff</p>")
                .map_err(status)
                .err(),
            Some("422")
        );
        assert!(check_content(Format::Markdown, "# Überblick".as_bytes()).is_ok());
    }
}
