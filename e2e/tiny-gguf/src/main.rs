//! Writes the tests' tiny GGUF model (see the library) to a file, for
//! `make demo` and for trying an engine by hand:
//!
//! ```text
//! tiny-gguf OUT [NAME [SEED]]      # tiny-gguf /tmp/tiny-chat.gguf tiny-chat 1
//! ```

use std::process::ExitCode;

use tiny_gguf::{Shape, tiny_llama};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(out), name, seed) = (
        args.first(),
        args.get(1).map_or("tiny-chat", String::as_str),
        args.get(2).map(|s| s.parse::<u64>()),
    ) else {
        eprintln!("usage: tiny-gguf OUT [NAME [SEED]]");
        return ExitCode::from(2);
    };
    let seed = match seed {
        None => 1,
        Some(Ok(seed)) => seed,
        Some(Err(e)) => {
            eprintln!("tiny-gguf: SEED: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = tiny_llama(name, seed, Shape::default());
    match std::fs::write(out, &bytes) {
        Ok(()) => {
            println!("{out} ({} bytes)", bytes.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tiny-gguf: writing {out}: {e}");
            ExitCode::FAILURE
        }
    }
}
