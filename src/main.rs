//! `sp-sync`: parse the command line, call the library, print.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
