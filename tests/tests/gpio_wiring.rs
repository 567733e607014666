//! `run`'s GPIO wiring end to end with embedded-hal-mock pins: scripted trigger levels on a
//! sequence of frames, the real model classifies the triggered frames, and the actuators mapped
//! to those labels (and only those) are driven; the edge → actuator latency is measured.

use std::sync::atomic::AtomicBool;

use edgefuse_board::{ActuatorMode, Edge, TriggerInput};
use edgefuse_models::Bundle;
use edgefuse_runtime::actuate::{EdgeClock, Io};
use edgefuse_runtime::capture;
use edgefuse_runtime::decision::DecisionConfig;
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig, RunLimits};
use edgefuse_runtime::trigger::{PolledTrigger, Trigger};
use edgefuse_tests::{default_bundle, samples};
use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

#[test]
fn trigger_edges_on_a_frame_sequence_fire_the_mapped_actuators() {
    let bundle = Bundle::open(default_bundle()).unwrap();
    let cfg = PipelineConfig {
        top_k: 3,
        decision: DecisionConfig {
            threshold: 0.5,
            fire_wins: 1,
            window: 1,
            release_losses: 1,
            ..Default::default()
        },
        ring_slots: 4,
        device: edgefuse_runtime::gpu::DeviceChoice::Cpu,
        ..Default::default()
    };
    let mut pipeline = Pipeline::new(&bundle, cfg).unwrap();
    let labels = pipeline.labels().to_vec();
    let idx = |l: &str| labels.iter().position(|x| x == l).unwrap() as u16;
    // Bundled MNIST samples in order are 7, 2, 1, 0, 4, 1, …
    let mut source = capture::open(&format!("file://{}", samples("mnist").display())).unwrap();

    // One level read per frame: rising edges at frames 2 ("1") and 4 ("4"); frame 3's falling
    // edge does not trigger. The run stops after two classified frames, i.e. five reads.
    let levels = [State::Low, State::Low, State::High, State::Low, State::High];
    let mut input = Mock::new(&levels.map(T::get));
    let clock = EdgeClock::new();
    let trigger = PolledTrigger::new(
        TriggerInput::new(input.clone(), Edge::Rising, 0),
        clock.clone(),
    );
    let mut trigger = Trigger::External(Box::new(trigger));

    // "1": a long pulse (still on at the end; released by `release`), "4": hold, "7": never
    // triggered (frame 0 was not classified).
    let mut one = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
    let mut four = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
    let mut seven = Mock::new(&[T::set(State::Low)]);
    let mut io = Io::new(
        vec![
            (idx("1"), one.clone(), ActuatorMode::Pulse(60_000), false),
            (idx("4"), four.clone(), ActuatorMode::Hold, false),
            (idx("7"), seven.clone(), ActuatorMode::Pulse(100), false),
        ],
        None,
        clock,
    )
    .unwrap();

    let stop = AtomicBool::new(false);
    let mut classified = Vec::new();
    let mut latencies = Vec::new();
    let limits = RunLimits {
        max_frames: Some(2),
        warmup: 0,
    };
    let (summary, result) = pipeline.run(source.as_mut(), &mut trigger, limits, &stop, |r| {
        classified.push((
            r.frame.seq,
            labels[r.top.iter().next().unwrap().0 as usize].clone(),
        ));
        if let Some(l) = io.on_events(r.events) {
            latencies.push(l);
        }
        io.tick(std::time::Instant::now());
        Ok(())
    });
    result.unwrap();
    assert_eq!(classified, [(2, "1".to_string()), (4, "4".to_string())]);
    assert_eq!(summary.not_triggered, 3);
    assert_eq!(latencies.len(), 2, "both firings were caused by an edge");
    assert_eq!(io.latency.count(), 2);
    println!(
        "gpio wiring (mock pins): frames {classified:?} fired; edge → actuator {:?}",
        latencies
    );
    assert_eq!(io.errors(), 0);
    // The pins come back (clones of the mocks below share their expectations).
    let (pins, led) = io.release();
    assert_eq!(pins.len(), 3);
    assert!(led.is_none());
    drop((pins, trigger));
    one.done();
    four.done();
    seven.done();
    input.done();
}
