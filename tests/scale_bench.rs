//! `scale-bench`: runs the fleet-scale scenario (`cortex_e2e::scale`) at several sizes and prints
//! a markdown table for docs/scale.md. Usage (binaries built first; see docs/scale.md):
//! `cargo run -p cortex-e2e --bin scale-bench -- 50 200 500` (neuron counts; 8 GPUs each).

use cortex_e2e::scale::{Size, run, scratch, table};

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![50, 200, 500] } else { sizes };
    let mut figures = Vec::new();
    for neurons in sizes {
        let (_keep, dir) = scratch();
        eprintln!("scale-bench: {neurons} neurons × 8 GPUs ...");
        figures.push(run(&dir, Size { neurons, devices: 8 }).await);
        eprintln!("{}", table(&figures[figures.len() - 1..]));
    }
    println!("{}", table(&figures));
}
