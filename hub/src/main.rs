//! `hub`: see `hub --help` and the crate docs.

fn main() -> std::process::ExitCode {
    match hub::cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
