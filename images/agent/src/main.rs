fn main() -> std::process::ExitCode {
    polygraph_agent::cli::run(std::env::args_os())
}
