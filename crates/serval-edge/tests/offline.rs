//! The edge runtime with phase 2 out of reach: forwards wait in the queue across restarts,
//! keyed, and local answers are unaffected.

use serde_json::{Value, json};
use serval_core::ModelConfig;
use serval_core::cascade::CascadePolicy;
use serval_edge::{
    Answer, EdgeError, EdgeRuntime, OfflineQueue, Phase1, Phase2Client, Phase2Options,
    QueueOptions, load_phase1,
};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn runtime(queue: &std::path::Path, policy: &str) -> EdgeRuntime {
    let dir = format!("{EXAMPLES}/models/digits_phase1");
    let bytes = std::fs::read(format!("{dir}/1/model.onnx")).unwrap();
    let config = ModelConfig::load("digits_phase1", dir.as_ref()).unwrap();
    let phase1 = load_phase1("digits_phase1", &bytes, config).unwrap();
    // Port 9 (discard) is closed on loopback: every attempt is refused at once.
    let mut options = Phase2Options::new("http://127.0.0.1:9", "digits_phase2");
    options.retry.attempts = 1;
    let queue = OfflineQueue::open(queue, QueueOptions::default()).unwrap();
    let phase1 = Phase1::new(phase1, CascadePolicy::from_toml(policy).unwrap()).unwrap();
    EdgeRuntime::new(phase1, Some(Phase2Client::new(options)), Some(queue))
}

fn instances(n: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/data/digits_two_phase.jsonl")).unwrap();
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn collect(edge: &mut EdgeRuntime, batch: &[Value]) -> Vec<Answer> {
    let mut answers = Vec::new();
    edge.answer(batch, &mut |a: &[Answer]| -> Result<(), EdgeError> {
        answers.extend_from_slice(a);
        Ok(())
    })
    .unwrap();
    answers
}

#[test]
fn forwards_wait_in_the_queue_across_restarts_and_local_answers_stand() {
    let queue = tempfile::tempdir().unwrap();
    let batch = instances(40);
    let answers = {
        let mut edge = runtime(queue.path(), "[forward]\nconfidence = [0.0, 0.999]\n");
        let answers = collect(&mut edge, &batch);
        assert_eq!(edge.queued(), edge.stats().queued);
        answers
    };
    assert_eq!(answers.len(), 40);
    let queued: Vec<&Answer> = answers.iter().filter(|a| a.queued).collect();
    assert!(!queued.is_empty(), "the policy forwards something");
    for (answer, instance) in answers.iter().zip(&batch) {
        assert_eq!(answer.key, instance["key"], "keys pass through in order");
        assert_eq!(answer.phase, 1);
        assert_eq!(answer.provisional, answer.forwarded.is_some());
        assert_eq!(answer.queued, answer.forwarded.is_some());
        assert!(answer.outputs.contains_key("probabilities"));
    }
    // A new process finds them all, still unanswered.
    let mut edge = runtime(queue.path(), "[forward]\nconfidence = [0.0, 0.999]\n");
    assert_eq!(edge.queued(), queued.len() as u64);
    let again = collect(&mut edge, &[json!({"features": batch[0]["features"]})]);
    assert_eq!(
        again.len(),
        1,
        "nothing replays while phase 2 is out of reach"
    );
    assert!(uuid_v7(&again[0].key), "a minted key: {}", again[0].key);
}

fn uuid_v7(text: &str) -> bool {
    text.len() == 36 && text.as_bytes()[14] == b'7'
}

#[test]
fn an_unreachable_phase_2_is_probed_again_only_after_the_outage_wait() {
    let batch = instances(40);
    for (wait, requests) in [
        (std::time::Duration::from_secs(3600), 1),
        (std::time::Duration::ZERO, 2),
    ] {
        let queue = tempfile::tempdir().unwrap();
        let every_class = "[forward]\nclasses = [\"0\", \"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"not_digit\"]\n";
        let mut edge = runtime(queue.path(), every_class).with_outage_probe(wait);
        collect(&mut edge, &batch[..20]);
        assert_eq!(edge.stats().phase2_requests, 1);
        collect(&mut edge, &batch[20..]);
        assert_eq!(edge.stats().phase2_requests, requests, "waiting {wait:?}");
        assert_eq!(
            edge.queued(),
            40,
            "every forward waits in the queue either way"
        );
    }
}
