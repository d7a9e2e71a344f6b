//! yaobank-customer: see the crate docs.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    krites_demo::main_for(krites_demo::Kind::Customer, &args)
}
