//! Tests of the trainer as the daemon uses it.

use super::*;
use crate::state::TrainState;

fn synthetic_cfg(loss: Loss, hidden: &[usize], seed: u64) -> TrainConfig {
    TrainConfig {
        dataset: DatasetConfig::Synthetic {
            n: 50,
            input_dim: 6,
            output_dim: 4,
            noise_std: 0.01,
            data_seed: None,
        },
        model: ModelConfig {
            hidden: hidden.to_vec(),
            activation: Activation::Tanh,
            loss,
            names: TensorNames::Layers,
        },
        optimizer: OptimizerConfig {
            lr: 0.01,
            weight_decay: 1e-3,
            ..OptimizerConfig::default()
        },
        batch_size: 8,
        seed,
        threads: 1,
        validation_fraction: 0.0,
    }
}

/// Every f32 compared by bit pattern (so NaN == NaN and 0.0 != -0.0).
fn assert_bit_identical(a: &TrainState, b: &TrainState, what: &str) {
    assert_eq!(a.epoch, b.epoch, "{what}: epoch");
    assert_eq!(a.global_step, b.global_step, "{what}: global_step");
    assert_eq!(a.step_in_epoch, b.step_in_epoch, "{what}: step_in_epoch");
    assert_eq!(a.data, b.data, "{what}: data state");
    assert_eq!(
        a.last_loss.to_bits(),
        b.last_loss.to_bits(),
        "{what}: last_loss"
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (x, y) in a.model.tensors.iter().zip(&b.model.tensors) {
        assert_eq!(x.name, y.name);
        assert!(
            bits(&x.data) == bits(&y.data),
            "{what}: tensor {} differs",
            x.name
        );
    }
    for (x, y) in a.optimizer.params.iter().zip(&b.optimizer.params) {
        assert_eq!(x.step, y.step, "{what}: step of {}", x.name);
        assert!(
            bits(&x.exp_avg) == bits(&y.exp_avg),
            "{what}: exp_avg of {}",
            x.name
        );
        assert!(
            bits(&x.exp_avg_sq) == bits(&y.exp_avg_sq),
            "{what}: exp_avg_sq of {}",
            x.name
        );
    }
    assert_eq!(a.model.tensors.len(), b.model.tensors.len());
    assert_eq!(a.optimizer.params.len(), b.optimizer.params.len());
}

fn archive(state: &TrainState) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rkyv::rancor::Error>(state).expect("serialize")
}

fn access(bytes: &[u8]) -> &ArchivedTrainState {
    rkyv::access::<ArchivedTrainState, rkyv::rancor::Error>(bytes).expect("valid archive")
}

#[test]
fn a_snapshot_shows_the_state_it_was_taken_at_while_the_trainer_steps_on() {
    let cfg = synthetic_cfg(Loss::Mse, &[16, 8], 3);
    let mut a = Trainer::new(&cfg).unwrap();
    let mut b = Trainer::new(&cfg).unwrap();
    for _ in 0..5 {
        a.step();
        b.step();
    }
    let before = a.state().clone();
    let snapshot = a.snapshot();
    // Another thread reads the snapshot for a while, as the persisting
    // thread copies it, then lets it go.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let seen = (*snapshot).clone();
        drop(snapshot);
        seen
    });
    // The step computes its gradients meanwhile, and waits before it writes.
    a.step();
    let seen = reader.join().unwrap();
    assert_bit_identical(&seen, &before, "the snapshot");
    assert!(
        a.take_snapshot_wait() >= std::time::Duration::from_millis(20),
        "the step did not wait for the snapshot"
    );
    // And the step is the one a trainer without a snapshot takes.
    b.step();
    assert_bit_identical(a.state(), b.state(), "after the step");
    assert_eq!(a.take_snapshot_wait(), std::time::Duration::ZERO);
}

#[test]
fn fresh_trainers_are_bit_identical_at_every_step() {
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let cfg = synthetic_cfg(loss, &[16, 8], 3);
        let mut a = Trainer::new(&cfg).unwrap();
        let mut b = Trainer::new(&cfg).unwrap();
        assert_bit_identical(a.state(), b.state(), "initial");
        for i in 0..40 {
            let oa = a.step();
            let ob = b.step();
            assert_eq!(oa.loss.to_bits(), ob.loss.to_bits());
            assert_bit_identical(a.state(), b.state(), &format!("{loss:?} step {i}"));
        }
        // A different seed gives different weights.
        let c = Trainer::new(&synthetic_cfg(loss, &[16, 8], 4)).unwrap();
        assert_ne!(
            c.state().model.tensors[0].data,
            a.state().model.tensors[0].data
        );
    }
}

#[test]
fn counters_and_epochs() {
    let cfg = synthetic_cfg(Loss::Mse, &[5], 1);
    let mut t = Trainer::new(&cfg).unwrap();
    assert_eq!(t.steps_per_epoch(), 7); // ceil(50 / 8), last batch of 2
    assert!(t.state().last_loss.is_nan());
    for i in 1..=14u64 {
        let o = t.step();
        assert_eq!(o.global_step, i);
        assert_eq!(o.epoch_completed, i % 7 == 0, "step {i}");
        assert_eq!(o.epoch, i / 7);
        assert_eq!(t.state().step_in_epoch, i % 7);
        assert!(o.loss.is_finite());
        assert_eq!(t.state().last_loss.to_bits(), o.loss.to_bits());
    }
    assert!(t.state().optimizer.params.iter().all(|p| p.step == 14));
    let dbg = format!("{t:?}");
    assert!(dbg.contains("global_step: 14") && dbg.len() < 400, "{dbg}");
    t.set_wall_clock(123, 456);
    assert_eq!(
        (t.state().wall_clock_unix_ns, t.state().train_time_ms),
        (123, 456)
    );
}

/// A trainer built for a restore that finds nothing to restore starts
/// exactly where `Trainer::new` does, whether its weights are drawn
/// explicitly or by the first step.
#[test]
fn a_trainer_built_for_a_restore_initialises_as_new_when_nothing_is_restored() {
    for cfg in [
        synthetic_cfg(Loss::Mse, &[5], 3),
        TrainConfig::seed_tutorial(),
    ] {
        let mut new = Trainer::new(&cfg).unwrap();
        let mut later = Trainer::new_for_restore_within(&cfg, &|_| Ok(())).unwrap();
        assert!(later.state().model.tensors[0]
            .data
            .iter()
            .all(|&v| v == 0.0));
        later.initialise_weights();
        assert_bit_identical(new.state(), later.state(), "initialised");
        let mut by_step = Trainer::new_for_restore_within(&cfg, &|_| Ok(())).unwrap();
        for _ in 0..3 {
            new.step();
            by_step.step();
        }
        assert_bit_identical(new.state(), by_step.state(), "first steps");
    }
}

/// Runs `total` steps uninterrupted, and again with a checkpoint after
/// `cut` steps restored into a brand-new trainer; the results must match
/// bit for bit.
fn resume_matches(cfg: &TrainConfig, cut: usize, total: usize) {
    let mut straight = Trainer::new(cfg).unwrap();
    for _ in 0..total {
        straight.step();
    }
    let mut first = Trainer::new(cfg).unwrap();
    for _ in 0..cut {
        first.step();
    }
    first.set_wall_clock(1_700_000_000_000_000_000, 42);
    let bytes = archive(first.state());
    drop(first);
    // As the daemon resumes: weights left at zero for the restore.
    let mut resumed = Trainer::new_for_restore_within(cfg, &|_| Ok(())).unwrap();
    resumed.restore(access(&bytes)).expect("restore");
    assert_eq!(resumed.state().train_time_ms, 42);
    assert_eq!(resumed.state().global_step, cut as u64);
    for _ in cut..total {
        resumed.step();
    }
    assert_bit_identical(
        straight.state(),
        resumed.state(),
        &format!("resume at {cut}"),
    );
}

#[test]
fn resume_mid_epoch_is_bit_identical() {
    let cfg = synthetic_cfg(Loss::Mse, &[12, 6], 9);
    resume_matches(&cfg, 3, 20); // inside the first epoch
    resume_matches(&cfg, 10, 30); // inside the second epoch
    let ce = synthetic_cfg(Loss::CrossEntropy, &[12], 9);
    resume_matches(&ce, 11, 25);
}

#[test]
fn resume_at_epoch_boundary_is_bit_identical() {
    let cfg = synthetic_cfg(Loss::Mse, &[12, 6], 9);
    let spe = Trainer::new(&cfg).unwrap().steps_per_epoch() as usize;
    resume_matches(&cfg, spe, 3 * spe);
    resume_matches(&cfg, 2 * spe, 3 * spe + 1);
    resume_matches(&TrainConfig::seed_tutorial(), 8, 40);
}

#[test]
fn restore_into_a_trainer_that_already_ran() {
    // The daemon might restore into a trainer that took steps; the result
    // must still be exactly the record's continuation.
    let cfg = synthetic_cfg(Loss::Mse, &[7], 2);
    let mut a = Trainer::new(&cfg).unwrap();
    for _ in 0..9 {
        a.step();
    }
    let bytes = archive(a.state());
    let mut b = Trainer::new(&cfg).unwrap();
    for _ in 0..17 {
        b.step();
    }
    b.restore(access(&bytes)).unwrap();
    assert_bit_identical(a.state(), b.state(), "after restore");
    for _ in 0..10 {
        a.step();
        b.step();
    }
    assert_bit_identical(a.state(), b.state(), "continued");
}

#[test]
fn restore_refuses_foreign_records() {
    let cfg = synthetic_cfg(Loss::Mse, &[7], 2);
    let mut t = Trainer::new(&cfg).unwrap();
    t.step();

    let mut wrong_version = t.state().clone();
    wrong_version.schema_version = SCHEMA_VERSION + 1;
    let e = t.restore(access(&archive(&wrong_version))).unwrap_err();
    assert!(matches!(e, TrainError::SchemaVersion { .. }), "{e}");

    let other = Trainer::new(&synthetic_cfg(Loss::Mse, &[8], 2)).unwrap();
    let e = t
        .restore(access(&archive(other.state())))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("{:016x}", other.fingerprint())), "{e}");
    assert!(e.contains(&format!("{:016x}", t.fingerprint())), "{e}");
    assert!(
        e.contains(&other.describe()) && e.contains(&t.describe()),
        "{e}"
    );

    let other_seed = Trainer::new(&synthetic_cfg(Loss::Mse, &[7], 5)).unwrap();
    let e = t.restore(access(&archive(other_seed.state()))).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::Seed {
                record: 5,
                config: 2
            }
        ),
        "{e}"
    );

    // A record whose tensor names do not fit (but a matching fingerprint).
    let before = t.state().clone();
    let mut renamed = t.state().clone();
    renamed.model.tensors[1].name = "layers.0.bogus".into();
    let e = t
        .restore(access(&archive(&renamed)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("layers.0.bogus"), "{e}");
    let mut short = t.state().clone();
    short.optimizer.params[0].exp_avg.pop();
    let e = t.restore(access(&archive(&short))).unwrap_err().to_string();
    assert!(e.contains("layers.0.weight"), "{e}");
    let mut far = t.state().clone();
    far.step_in_epoch = 1000;
    assert!(t.restore(access(&archive(&far))).is_err());
    // Failed restores changed nothing.
    assert_bit_identical(&before, t.state(), "after refused restores");
}

#[test]
fn a_model_without_hidden_layers_is_described_as_linear_whatever_the_activation() {
    let mut cfg = TrainConfig::seed_tutorial();
    cfg.model.activation = Activation::Relu;
    let relu = Trainer::new(&cfg).unwrap();
    assert_eq!(
        relu.describe(),
        "mlp 1-1 linear mse, 2 tensors, 2 parameters"
    );
    // The fingerprint still includes the configured activation, so logs
    // written before this description change resume unchanged.
    let identity = Trainer::new(&TrainConfig::seed_tutorial()).unwrap();
    assert_ne!(relu.fingerprint(), identity.fingerprint());
}

#[test]
fn seed_tutorial_starts_at_10_and_1_and_stays_there() {
    let cfg = TrainConfig::seed_tutorial();
    let mut t = Trainer::new(&cfg).unwrap();
    assert_eq!(t.describe(), "mlp 1-1 linear mse, 2 tensors, 2 parameters");
    let s = t.state();
    assert_eq!(s.model.description, t.describe());
    assert_eq!(s.model.fingerprint, t.fingerprint());
    assert_eq!(s.model.tensors[0].name, "fc.weight");
    assert_eq!(s.model.tensors[0].shape, [1, 1]);
    assert_eq!(s.model.tensors[0].data, [10.0]);
    assert_eq!(s.model.tensors[1].name, "fc.bias");
    assert_eq!(s.model.tensors[1].shape, [1]);
    assert_eq!(s.model.tensors[1].data, [1.0]);
    assert_eq!(s.optimizer.params[0].name, "fc.weight");
    assert_eq!((s.optimizer.beta1, s.optimizer.beta2), (0.5, 0.999));
    assert_eq!(t.steps_per_epoch(), 8);
    let first = t.step().loss;
    let mut last = first;
    while t.state().epoch < 30 {
        last = t.step().loss;
    }
    let w = t.state().model.tensors[0].data[0];
    let b = t.state().model.tensors[1].data[0];
    assert!((w - 10.0).abs() < 0.1, "weight {w}");
    assert!((b - 1.0).abs() < 0.1, "bias {b}");
    let y = t.predict(&[1.0]).unwrap()[0];
    assert!((y - 11.0).abs() < 0.1, "prediction at x = 1: {y}");
    // The loss is the noise level (std 0.01 → MSE about 1e-4).
    assert!(last < 1e-3, "loss {first} -> {last}");
}

#[test]
fn training_reduces_the_loss() {
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let mut cfg = synthetic_cfg(loss, &[32], 0);
        cfg.dataset = DatasetConfig::Synthetic {
            n: 256,
            input_dim: 8,
            output_dim: 3,
            noise_std: 0.0,
            data_seed: None,
        };
        let mut t = Trainer::new(&cfg).unwrap();
        let mean_epoch_loss = |t: &mut Trainer| {
            let mut sum = 0.0;
            for _ in 0..t.steps_per_epoch() {
                sum += t.step().loss;
            }
            sum / t.steps_per_epoch() as f32
        };
        let first = mean_epoch_loss(&mut t);
        for _ in 0..20 {
            mean_epoch_loss(&mut t);
        }
        let last = mean_epoch_loss(&mut t);
        assert!(last < 0.5 * first, "{loss:?}: {first} -> {last}");
    }
}

#[test]
fn diabetes_trains() {
    let cfg = TrainConfig {
        dataset: DatasetConfig::Diabetes {
            standardize_inputs: true,
            standardize_targets: true,
        },
        model: ModelConfig {
            hidden: vec![16],
            ..ModelConfig::default()
        },
        optimizer: OptimizerConfig {
            lr: 0.01,
            ..OptimizerConfig::default()
        },
        batch_size: 32,
        seed: 1,
        threads: 1,
        validation_fraction: 0.1,
    };
    let mut t = Trainer::new(&cfg).unwrap();
    assert!(
        t.describe().starts_with("mlp 10-16-1 relu mse"),
        "{}",
        t.describe()
    );
    let first = t.step().loss;
    let mut last = first;
    while t.state().epoch < 30 {
        last = t.step().loss;
    }
    assert!(last < 0.8 * first, "{first} -> {last}");
}

#[test]
fn fingerprint_follows_architecture_not_seed_or_optimizer() {
    let base = synthetic_cfg(Loss::Mse, &[16, 8], 1);
    let fp = |c: &TrainConfig| Trainer::new(c).unwrap().fingerprint();
    let f0 = fp(&base);
    let mut same = base.clone();
    same.seed = 77;
    same.optimizer.lr = 0.5;
    same.optimizer.betas = [0.5, 0.9];
    same.batch_size = 3;
    assert_eq!(fp(&same), f0);
    let variants = [
        synthetic_cfg(Loss::Mse, &[16, 9], 1),
        synthetic_cfg(Loss::Mse, &[16], 1),
        synthetic_cfg(Loss::CrossEntropy, &[16, 8], 1),
        {
            let mut c = base.clone();
            c.model.activation = Activation::Relu;
            c
        },
        {
            let mut c = base.clone();
            c.dataset = DatasetConfig::Synthetic {
                n: 51,
                input_dim: 6,
                output_dim: 4,
                noise_std: 0.01,
                data_seed: None,
            };
            c
        },
    ];
    for v in &variants {
        assert_ne!(fp(v), f0, "{:?}", v.model);
    }
    // Stable across builds and runs: the tutorial's fingerprint is a fixed
    // number (records already written carry it; changing the canonical
    // text would orphan them).
    let tutorial = Trainer::new(&TrainConfig::seed_tutorial()).unwrap();
    assert_eq!(tutorial.fingerprint(), 0xd4e8_9a6a_c34a_285d);
}

#[test]
fn init_from_replaces_weights_and_reports_problems() {
    let cfg = synthetic_cfg(Loss::Mse, &[3], 0);
    let mut t = Trainer::new(&cfg).unwrap();
    let good: Vec<(String, Vec<u64>, Vec<f32>)> = t
        .state()
        .model
        .tensors
        .iter()
        .map(|x| (x.name.clone(), x.shape.clone(), vec![0.25; x.data.len()]))
        .collect();
    // Order does not matter.
    let mut reversed = good.clone();
    reversed.reverse();
    t.init_from(&reversed).unwrap();
    assert!(t
        .state()
        .model
        .tensors
        .iter()
        .all(|x| x.data.iter().all(|&v| v == 0.25)));

    let mut bad = good.clone();
    bad.remove(1); // missing layers.0.bias
    bad[0].1 = vec![3, 5]; // wrong shape of layers.0.weight
    bad.push(("extra.weight".into(), vec![1], vec![0.0]));
    let before = t.state().clone();
    let e = t.init_from(&bad).unwrap_err().to_string();
    assert!(e.contains("missing tensor layers.0.bias"), "{e}");
    assert!(e.contains("layers.0.weight has shape [3, 5]"), "{e}");
    assert!(e.contains("unexpected tensor extra.weight"), "{e}");
    assert_bit_identical(&before, t.state(), "after refused init_from");

    let mut short = good.clone();
    short[2].2.pop();
    let e = t.init_from(&short).unwrap_err().to_string();
    assert!(e.contains("layers.1.weight has 11 values"), "{e}");
    let mut twice = good;
    twice.push(twice[0].clone());
    let e = t.init_from(&twice).unwrap_err().to_string();
    assert!(e.contains("given twice"), "{e}");
}

#[test]
fn config_from_toml_with_defaults() {
    let cfg: TrainConfig = toml::from_str("[dataset]\nkind = \"seed\"\n").unwrap();
    assert_eq!(cfg.batch_size, 32);
    assert_eq!(cfg.seed, 0);
    assert_eq!(cfg.model, ModelConfig::default());
    assert_eq!(cfg.model.activation, Activation::Relu);
    assert_eq!(cfg.optimizer, OptimizerConfig::default());
    assert_eq!(cfg.optimizer.betas, [0.9, 0.999]);
    assert_eq!(
        cfg.dataset,
        DatasetConfig::Seed {
            n: 256,
            noise_std: 0.01
        }
    );

    let full = r#"
        batch_size = 64
        seed = 7
        [dataset]
        kind = "synthetic"
        n = 1000
        input_dim = 32
        output_dim = 10
        [model]
        hidden = [128, 64]
        activation = "none"
        loss = "cross_entropy"
        [optimizer]
        lr = 3e-4
        betas = [0.5, 0.99]
        eps = 1e-6
        weight_decay = 0.01
    "#;
    let cfg: TrainConfig = toml::from_str(full).unwrap();
    assert_eq!(cfg.model.activation, Activation::Identity);
    assert_eq!(cfg.model.loss, Loss::CrossEntropy);
    assert_eq!(cfg.optimizer.betas, [0.5, 0.99]);
    let t = Trainer::new(&cfg).unwrap();
    assert_eq!(
        t.describe(),
        "mlp 32-128-64-10 identity cross_entropy, 6 tensors, 13130 parameters"
    );

    let tutorial: TrainConfig = toml::from_str(
        "[dataset]\nkind = \"seed\"\n[model]\nnames = \"fc\"\nactivation = \"identity\"\n\
         [optimizer]\nbetas = [0.5, 0.999]\n",
    )
    .unwrap();
    assert_eq!(tutorial, TrainConfig::seed_tutorial());

    let csv: TrainConfig =
        toml::from_str("[dataset]\nkind = \"csv\"\npath = \"d.csv\"\ntargets = [\"y\"]\n").unwrap();
    assert!(matches!(csv.dataset, DatasetConfig::Csv { .. }));
    let _: TrainConfig = toml::from_str("[dataset]\nkind = \"diabetes\"\n").unwrap();
    let _: TrainConfig = toml::from_str("[dataset]\nkind = \"winequality\"\n").unwrap();
}

#[test]
fn unknown_config_keys_are_errors_naming_the_key() {
    let cases = [
        ("bach_size = 3\n[dataset]\nkind = \"seed\"\n", "bach_size"),
        ("[dataset]\nkind = \"seed\"\nnoise = 1.0\n", "noise"),
        (
            "[dataset]\nkind = \"seed\"\n[model]\nhiden = [3]\n",
            "hiden",
        ),
        (
            "[dataset]\nkind = \"seed\"\n[optimizer]\nmomentum = 0.9\n",
            "momentum",
        ),
        ("[dataset]\nkind = \"winequality\"\nn = 3\n", "`n`"),
        ("[dataset]\nkind = \"mnist\"\n", "mnist"),
        (
            "[dataset]\nkind = \"seed\"\n[model]\nactivation = \"gelu\"\n",
            "gelu",
        ),
        ("[dataset]\nkind = \"csv\"\npath = \"x.csv\"\n", "targets"),
    ];
    for (text, key) in cases {
        let e = toml::from_str::<TrainConfig>(text).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn invalid_configs_are_refused_clearly() {
    let mut c = TrainConfig::seed_tutorial();
    c.batch_size = 0;
    assert!(Trainer::new(&c)
        .unwrap_err()
        .to_string()
        .contains("batch_size"));
    let mut c = TrainConfig::seed_tutorial();
    c.model.hidden = vec![4];
    assert!(Trainer::new(&c)
        .unwrap_err()
        .to_string()
        .contains("names = \"fc\""));
    let mut c = TrainConfig::seed_tutorial();
    c.optimizer.betas = [1.5, 0.9];
    assert!(Trainer::new(&c)
        .unwrap_err()
        .to_string()
        .contains("betas[0]"));
    let mut c = TrainConfig::seed_tutorial();
    c.model.loss = Loss::CrossEntropy;
    assert!(Trainer::new(&c).unwrap_err().to_string().contains("mse"));
    let mut c = synthetic_cfg(Loss::Mse, &[0], 0);
    c.model.hidden = vec![4, 0];
    assert!(Trainer::new(&c)
        .unwrap_err()
        .to_string()
        .contains("hidden[1]"));
    let mut t = Trainer::new(&TrainConfig::seed_tutorial()).unwrap();
    assert!(t.predict(&[]).is_err());
}

#[test]
fn set_optimizer_changes_hyperparameters() {
    let mut t = Trainer::new(&TrainConfig::seed_tutorial()).unwrap();
    let opt = OptimizerConfig {
        lr: 0.1,
        ..OptimizerConfig::default()
    };
    t.set_optimizer(&opt).unwrap();
    assert_eq!(t.state().optimizer.lr, 0.1);
    assert_eq!(t.config().optimizer, opt);
    let bad = OptimizerConfig {
        eps: -1.0,
        ..OptimizerConfig::default()
    };
    assert!(t.set_optimizer(&bad).is_err());
    assert_eq!(t.state().optimizer.eps, 1e-8);
}

#[test]
fn a_100_mib_synthetic_state_builds_quickly() {
    let cfg = TrainConfig {
        dataset: DatasetConfig::Synthetic {
            n: 1024,
            input_dim: 1024,
            output_dim: 16,
            noise_std: 0.0,
            data_seed: None,
        },
        model: ModelConfig {
            hidden: vec![2560, 2560],
            ..ModelConfig::default()
        },
        optimizer: OptimizerConfig::default(),
        batch_size: 32,
        seed: 0,
        threads: 2,
        validation_fraction: 0.0,
    };
    let start = std::time::Instant::now();
    let mut t = Trainer::new(&cfg).unwrap();
    let built = start.elapsed();
    let bytes = t.state().tensor_bytes();
    assert!(bytes > 100 << 20, "{bytes} bytes");
    let start = std::time::Instant::now();
    let loss = t.step().loss;
    let stepped = start.elapsed();
    eprintln!(
        "{}: {:.1} MiB of state built in {built:?}, one step of 32 in {stepped:?} (loss {loss})",
        t.describe(),
        bytes as f64 / (1 << 20) as f64
    );
    assert!(loss.is_finite());
    assert!(built.as_secs_f64() < 5.0, "construction took {built:?}");
}

/// A model large enough that its products and its optimizer step are cut
/// into several pieces.
fn wide_cfg(threads: usize) -> TrainConfig {
    TrainConfig {
        dataset: DatasetConfig::Synthetic {
            n: 80,
            input_dim: 96,
            output_dim: 8,
            noise_std: 0.0,
            data_seed: None,
        },
        model: ModelConfig {
            hidden: vec![1024, 300],
            ..ModelConfig::default()
        },
        optimizer: OptimizerConfig::default(),
        batch_size: 32,
        seed: 5,
        threads,
        validation_fraction: 0.2,
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut one = Trainer::new(&wide_cfg(1)).unwrap();
    for _ in 0..7 {
        one.step();
    }
    for threads in [2, 3] {
        let mut many = Trainer::new(&wide_cfg(threads)).unwrap();
        for _ in 0..7 {
            many.step();
        }
        assert_bit_identical(one.state(), many.state(), &format!("{threads} threads"));
    }
}

#[test]
fn a_run_resumed_with_another_thread_count_is_bit_identical() {
    let mut straight = Trainer::new(&wide_cfg(2)).unwrap();
    for _ in 0..8 {
        straight.step();
    }
    let mut first = Trainer::new(&wide_cfg(2)).unwrap();
    for _ in 0..4 {
        first.step();
    }
    let bytes = archive(first.state());
    let mut resumed = Trainer::new(&wide_cfg(1)).unwrap();
    resumed.restore(access(&bytes)).expect("restore");
    for _ in 4..8 {
        resumed.step();
    }
    assert_bit_identical(straight.state(), resumed.state(), "2 threads, then 1");
}

/// The restore copies tensors and moments in pieces spread over the
/// threads (1024 × 96 and 1024 × 300 weights: several pieces each); every
/// value must land where it was, whatever the thread count.
#[test]
fn a_restore_spread_over_threads_copies_every_value() {
    let mut first = Trainer::new(&wide_cfg(1)).unwrap();
    for _ in 0..3 {
        first.step();
    }
    let bytes = archive(first.state());
    for threads in [1, 2, 3] {
        let mut resumed = Trainer::new_for_restore_within(&wide_cfg(threads), &|_| Ok(())).unwrap();
        resumed.restore(access(&bytes)).expect("restore");
        assert_bit_identical(
            first.state(),
            resumed.state(),
            &format!("{threads} threads"),
        );
    }
}

#[test]
fn zero_threads_is_refused() {
    let err = Trainer::new(&wide_cfg(0)).unwrap_err().to_string();
    assert!(err.contains("threads"), "{err}");
}

#[test]
fn the_validation_split_is_fixed_by_the_seed() {
    let cfg = |seed: u64, fraction: f64| TrainConfig {
        validation_fraction: fraction,
        ..synthetic_cfg(Loss::CrossEntropy, &[8], seed)
    };
    let a = Trainer::new(&cfg(3, 0.2)).unwrap();
    let b = Trainer::new(&cfg(3, 0.2)).unwrap();
    assert_eq!(a.split_sizes(), (40, 10));
    assert_eq!(a.val, b.val, "same seed, same validation examples");
    assert_eq!(a.data, b.data);
    let c = Trainer::new(&cfg(4, 0.2)).unwrap();
    assert_ne!(a.val.inputs, c.val.inputs, "another seed holds out others");
    // Together the two parts are the whole dataset, each example once.
    let all = Trainer::new(&cfg(3, 0.0)).unwrap();
    assert_eq!(all.split_sizes(), (50, 0));
    let d = all.data.input_dim;
    let rows = |ds: &data::Dataset| -> Vec<Vec<u32>> {
        ds.inputs
            .chunks(d)
            .map(|r| r.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let mut parts = rows(&a.data);
    parts.extend(rows(&a.val));
    parts.sort();
    let mut whole = rows(&all.data);
    whole.sort();
    assert_eq!(parts, whole);
    // The fingerprint does not depend on the split.
    assert_eq!(a.fingerprint(), all.fingerprint());
}

#[test]
fn validation_is_evaluated_for_both_losses() {
    let mut ce = Trainer::new(&TrainConfig {
        validation_fraction: 0.2,
        ..synthetic_cfg(Loss::CrossEntropy, &[8], 3)
    })
    .unwrap();
    assert_eq!(ce.validation(), None);
    let v = ce.evaluate().expect("a validation split");
    assert_eq!(v.epoch, 0);
    assert!(v.loss.is_finite() && v.loss > 0.0);
    let acc = v.accuracy.expect("accuracy for cross-entropy");
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(ce.validation(), Some(v));
    // Deterministic, and forgotten once the weights change.
    assert_eq!(ce.evaluate(), Some(v));
    ce.step();
    assert_eq!(ce.validation(), None);
    let mut mse = Trainer::new(&TrainConfig {
        validation_fraction: 0.2,
        ..synthetic_cfg(Loss::Mse, &[8], 3)
    })
    .unwrap();
    let v = mse.evaluate().unwrap();
    assert!(v.accuracy.is_none() && v.loss.is_finite());
    let mut none = Trainer::new(&synthetic_cfg(Loss::Mse, &[8], 3)).unwrap();
    assert_eq!(none.evaluate(), None);
}

#[test]
fn bad_validation_fractions_are_refused_clearly() {
    for f in [-0.1, 0.95, f64::NAN] {
        let err = Trainer::new(&TrainConfig {
            validation_fraction: f,
            ..synthetic_cfg(Loss::Mse, &[8], 3)
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("validation_fraction must be in [0, 0.9]"),
            "{err}"
        );
    }
    // 3 examples: 0.1 holds out none, 0.9 leaves none for training.
    for f in [0.1, 0.9] {
        let err = Trainer::new(&TrainConfig {
            dataset: DatasetConfig::Seed {
                n: 3,
                noise_std: 0.0,
            },
            validation_fraction: f,
            ..TrainConfig::seed_tutorial()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("3 examples") && err.contains("for training"),
            "{err}"
        );
    }
}

#[test]
fn resuming_a_record_without_validation_under_a_split_says_what_to_set() {
    let no_val = synthetic_cfg(Loss::Mse, &[8], 3);
    let mut t = Trainer::new(&no_val).unwrap();
    t.step();
    let bytes = archive(t.state());
    let mut with_val = Trainer::new(&TrainConfig {
        validation_fraction: 0.1,
        ..no_val
    })
    .unwrap();
    let err = with_val.restore(access(&bytes)).unwrap_err().to_string();
    assert!(
        err.contains("record has 50 training examples") && err.contains("validation_fraction = 0"),
        "{err}"
    );
}
