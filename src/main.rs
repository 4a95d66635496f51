use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) if error.is_closed_stdout() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", cli::error_line(&error));
            ExitCode::from(error.exit_code())
        }
    }
}
