fn main() -> std::process::ExitCode {
    weir_control::cli::main()
}
