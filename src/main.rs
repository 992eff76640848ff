fn main() {
    let cli = robo_poet::cli::parse();
    if let Err(e) = robo_poet::cli::run(cli) {
        // A run stopped by Ctrl-C or SIGTERM has said what it saved; it only owes the exit code.
        if let Some(i) = e.downcast_ref::<robo_poet::cli::Interrupted>() {
            std::process::exit(i.exit_code());
        }
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
