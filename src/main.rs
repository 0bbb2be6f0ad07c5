//! The `tenantgate` binary: see [`tenantgate::cli`].
fn main() -> std::process::ExitCode {
    tenantgate::cli::main()
}
