//! Prints a file's extracted text and locations: `cargo run --example extract -- FILE`.

use std::process::ExitCode;

use heimdex_extract::{Format, Limits, extract};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: extract FILE");
        return ExitCode::FAILURE;
    };
    let format = std::path::Path::new(&path)
        .extension()
        .and_then(|ext| ext.to_str())
        .and_then(Format::from_extension);
    let Some(format) = format else {
        eprintln!("{path}: unsupported extension");
        return ExitCode::FAILURE;
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    match extract(format, &bytes, &Limits::default()) {
        Ok(extracted) => {
            println!("{}", extracted.text());
            eprintln!(
                "{path}: {format}, {} chars in {:?}; page starts {:?}; sections {:?}",
                extracted.char_len(),
                started.elapsed(),
                extracted.page_starts(),
                extracted
                    .sections()
                    .iter()
                    .map(|s| (s.level, s.title.as_str(), s.start))
                    .collect::<Vec<_>>()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}: {} ({e}; {e:?})", e.code());
            ExitCode::FAILURE
        }
    }
}
