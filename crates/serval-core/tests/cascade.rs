//! A cascade (`kind = "cascade"`) loaded from the example repository answers every instance as
//! its phases, run one by one, say it should; and a cascade that cannot be built says why.

mod common;

use std::fs;

use serval_core::cascade::{OUTPUT_CLASS, OUTPUT_CONFIDENCE, OUTPUT_PHASE, top_classes};
use serval_core::instances::decode_for;
use serval_core::{Error, ModelRepository, Tensor, TensorData};

const CASCADE: &str = "digits_cascade";

fn examples() -> ModelRepository {
    ModelRepository::open(common::examples_models(), common::options()).unwrap()
}

/// The two-phase example's instances as one `features` tensor.
fn digits() -> Tensor {
    let text =
        fs::read_to_string(format!("{}/data/digits_two_phase.jsonl", common::EXAMPLES)).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let repository = examples();
    let phase1 = repository.load("digits_phase1", None).unwrap();
    let signature = phase1.signature(None).unwrap();
    let decoded = decode_for(&phase1, signature, &rows).unwrap();
    decoded.inputs.into_iter().next().unwrap().1
}

fn output<'a>(outputs: &'a [(String, Tensor)], name: &str) -> &'a TensorData {
    outputs.iter().find(|(n, _)| n == name).unwrap().1.data()
}

#[test]
fn each_instance_is_answered_by_the_phase_the_policy_picks() {
    let repository = examples();
    let cascade = repository.load(CASCADE, None).unwrap();
    assert_eq!(cascade.backend_choice().kind.as_str(), "cascade");
    let phases = cascade.cascade().expect("a cascade");
    let features = digits();
    let rows = features.rows();
    let got = cascade
        .predict(None, vec![("features".into(), features.clone())])
        .unwrap();

    // The same decision taken by hand: phase 1 on everything, the policy, phase 2 on the rest.
    let first = phases
        .phase1()
        .predict(None, vec![("features".into(), features.clone())])
        .unwrap();
    let scores1 = &first.iter().find(|(n, _)| n == "probabilities").unwrap().1;
    let verdicts = phases
        .policy()
        .judge(scores1, &phases.phase1().config().class_labels)
        .unwrap();
    let second = phases
        .phase2()
        .predict(None, vec![("features".into(), features)])
        .unwrap();
    let scores2 = &second.iter().find(|(n, _)| n == "probabilities").unwrap().1;
    let answers2 = top_classes(scores2, &phases.phase2().config().class_labels).unwrap();

    let (TensorData::Bytes(class), TensorData::Fp32(confidence), TensorData::Int32(phase)) = (
        output(&got, OUTPUT_CLASS),
        output(&got, OUTPUT_CONFIDENCE),
        output(&got, OUTPUT_PHASE),
    ) else {
        panic!("cascade outputs have the wrong types: {got:?}");
    };
    let mut forwarded = 0;
    for row in 0..rows {
        let (want_class, want_confidence, want_phase) = match verdicts[row].forward {
            None => (verdicts[row].class.clone(), verdicts[row].confidence, 1),
            Some(_) => (answers2[row].0.clone(), answers2[row].1, 2),
        };
        forwarded += usize::from(want_phase == 2);
        assert_eq!(class[row], want_class, "row {row}");
        assert_eq!(phase[row], want_phase, "row {row}");
        // Phase 2 ran on the forwarded rows only, so its batch differs from the hand-run one.
        assert!(
            (confidence[row] - want_confidence).abs() < 1e-5,
            "row {row}"
        );
    }
    assert!(0 < forwarded && forwarded < rows, "{forwarded} of {rows}");
}

/// A repository holding the example phases and one cascade with this `config.toml`.
fn repository_with_cascade(config: &str) -> (tempfile::TempDir, ModelRepository) {
    let dir = tempfile::tempdir().unwrap();
    for model in ["digits_phase1", "digits_phase2", "iris_lr"] {
        common::copy_model(model, dir.path());
    }
    fs::create_dir_all(dir.path().join("c/1")).unwrap();
    fs::write(dir.path().join("c/config.toml"), config).unwrap();
    let repository = ModelRepository::open(dir.path(), common::options()).unwrap();
    (dir, repository)
}

#[track_caller]
fn refused(config: &str, needles: &[&str]) {
    let (_dir, repository) = repository_with_cascade(config);
    let err = repository.load("c", None).unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    let message = err.to_string();
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}

#[test]
fn a_cascade_that_cannot_be_built_says_why() {
    refused("kind = \"cascade\"\n", &["needs a [cascade] section"]);
    refused(
        "[cascade]\nphase1 = \"digits_phase1\"\n",
        &["only read for kind = \"cascade\""],
    );
    refused(
        "kind = \"cascade\"\n[cascade]\nphase1 = \"iris_lr\"\n",
        &["no policy", "iris_lr"],
    );
    refused(
        "kind = \"cascade\"\n[cascade]\nphase1 = \"missing\"\n",
        &["phase 1 'missing'"],
    );
    // Itself as a phase: refused before loading, not loaded without end.
    refused(
        "kind = \"cascade\"\n[cascade]\nphase1 = \"c\"\n",
        &["itself a cascade"],
    );
    // A phase 2 that takes other inputs than phase 1.
    refused(
        "kind = \"cascade\"\n[cascade]\nphase1 = \"digits_phase1\"\n\
         [cascade.policy]\nphase2 = \"iris_lr\"\n[cascade.policy.forward]\nconfidence = [0.0, 0.9]\n",
        &["phase 2", "iris_lr", "features"],
    );
    refused(
        "kind = \"cascade\"\n[cascade]\nphase1 = \"digits_phase1\"\n\
         [cascade.policy]\nphase2 = \"digits_phase2\"\nphase2_version = \"7\"\n\
         [cascade.policy.forward]\nconfidence = [0.0, 0.9]\n",
        &["phase 2 'digits_phase2'", "7"],
    );
}

#[test]
fn an_inline_policy_overrides_phase_1s_edge_section() {
    // Forward everything phase 1 is less than certain of: nearly every row goes to phase 2.
    let (_dir, repository) = repository_with_cascade(
        "kind = \"cascade\"\n[cascade]\nphase1 = \"digits_phase1\"\n\
         [cascade.policy]\nphase2 = \"digits_phase2\"\n[cascade.policy.forward]\nconfidence = [0.0, 1.0]\n",
    );
    let cascade = repository.load("c", None).unwrap();
    let features = digits();
    let rows = features.rows();
    let got = cascade
        .predict(None, vec![("features".into(), features)])
        .unwrap();
    let TensorData::Int32(phase) = output(&got, OUTPUT_PHASE) else {
        panic!("phase is INT32");
    };
    let forwarded = phase.iter().filter(|&&p| p == 2).count();
    let default = examples()
        .load(CASCADE, None)
        .unwrap()
        .predict(None, vec![("features".into(), digits())])
        .unwrap();
    let TensorData::Int32(default_phase) = output(&default, OUTPUT_PHASE) else {
        panic!("phase is INT32");
    };
    let default_forwarded = default_phase.iter().filter(|&&p| p == 2).count();
    assert!(
        forwarded > default_forwarded && forwarded <= rows,
        "{forwarded} vs {default_forwarded}"
    );
}
