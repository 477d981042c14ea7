//! `bursar`: CLI entry only.

fn main() {
    std::process::exit(bursar::cli::main());
}
