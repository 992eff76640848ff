use clap::Parser;

fn main() {
    let cli = robo_poet::cli::Cli::parse();
    if let Err(e) = robo_poet::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
