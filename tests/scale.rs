//! cortex at fleet scale, end to end: 200 SIMULATED neurons × 8 simulated GPUs (1,600) served by
//! one `neuron-swarm` process; `cortex plan` against them, `cortex serve` converging, a pin change
//! planned and applied. Prints the measured figures (see docs/scale.md; `scale-bench` runs the
//! same scenario at several sizes).

use cortex_e2e::scale::{Size, run, table};

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_neurons_with_1600_gpus_plan_converge_and_follow_a_pin_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let figures = run(dir.path(), Size { neurons: 200, devices: 8 }).await;
    eprintln!("\n{}", table(std::slice::from_ref(&figures)));
    assert_eq!(figures.pins, 200);
}
