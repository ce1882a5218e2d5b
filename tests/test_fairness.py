"""Issue 20: demographic groups in the data (real formats and the synthetic world), group-dependent
noise, group mixes, and per-group metrics and gaps in summaries, evaluations and reports."""
import json
import math
import tracemalloc

import numpy as np
import pytest
import yaml

import formats
from conftest import tiny
from ldl.cli import main
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.dataset import FERData
from ldl.data.groups import counts_for, sample_group_mix
from ldl.data.loading import DataError
from ldl.data.noise import PAIR_MAP, apply_noise, inject
from ldl.data.synthetic import SyntheticSpec, generate_split
from ldl.fairness import group_metrics, group_noise_detection
from ldl.group_report import cross_gap_matrices, cross_markdown
from ldl.report import group_runs, noise_label
from test_datasets import RAF_TEST, RAF_TRAIN, cfg_for


def with_groups(labels, groups, num_classes=8):
    n = len(labels)
    return FERData(images=np.zeros((n, 2, 2, 3), np.uint8), labels=np.asarray(labels), num_classes=num_classes,
                   names=np.array([f"s{i}" for i in range(n)]), groups={k: np.asarray(v) for k, v in groups.items()})


# ------------------------------------------------------------------ per-group metrics by hand
def test_per_group_metrics_and_gaps_by_hand():
    # 3 classes; group a: 3 samples, group b: 4 samples, one sample of unknown group.
    target = np.array([0, 1, 2, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 0, 1, 2, 2, 2])
    group = np.array(["a", "a", "a", "b", "b", "b", "b", ""])
    probs = np.full((8, 3), 0.1)
    probs[np.arange(8), pred] = 0.8          # every confidence 0.8: one ECE bin
    dist = np.full((8, 3), 0.1)
    dist[np.arange(8), target] = 0.8         # a miss costs KL = 0.7 ln 8
    m = group_metrics(target, probs, {"g": group}, dist)["g"]
    a, b = m["groups"]["a"], m["groups"]["b"]
    assert m["unknown"] == 1 and (a["n"], b["n"]) == (3, 4)
    # a: targets 0 1 2 -> 0 1 1.  F1: class 0 1, class 1 (P 1/2, R 1) 2/3, class 2 0.
    assert a["accuracy"] == pytest.approx(2 / 3) and a["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert a["macro_f1"] == pytest.approx(5 / 9) and a["ece"] == pytest.approx(0.8 - 2 / 3)
    assert a["kl"] == pytest.approx(0.7 * math.log(8) / 3)
    # b: targets 0 1 1 1 -> 0 1 2 2.  Recall 1 and 1/3; F1 1 and (P 1, R 1/3) 1/2; class 2 absent.
    assert b["accuracy"] == pytest.approx(1 / 2) and b["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert b["macro_f1"] == pytest.approx(3 / 4) and b["ece"] == pytest.approx(0.3)
    assert b["kl"] == pytest.approx(0.7 * math.log(8) / 2)
    assert m["accuracy_gap"] == pytest.approx(1 / 6) and m["accuracy_ratio"] == pytest.approx(3 / 4)
    assert m["f1_gap"] == pytest.approx(7 / 36) and m["f1_ratio"] == pytest.approx(20 / 27)
    # predicted-class rates: a (1/3, 2/3, 0), b (1/4, 1/4, 1/2)
    assert m["demographic_parity_by_class"] == pytest.approx([1 / 12, 5 / 12, 1 / 2])
    assert m["demographic_parity_difference"] == pytest.approx(1 / 2)
    # TPR of class 1: a 1, b 1/3 (the largest gap); class 2 has no positive in b (left out);
    # FPR gaps: class 1 a 1/2 vs b 0, class 2 a 0 vs b 1/2.
    assert m["equalised_odds_difference"] == pytest.approx(2 / 3)


def test_one_group_has_no_gaps():
    m = group_metrics(np.array([0, 1]), np.eye(2), {"g": np.array(["a", "a"])})["g"]
    assert m["groups"]["a"]["accuracy"] == 1 and "accuracy_gap" not in m


def test_noise_detection_within_groups_by_hand():
    groups = {"g": np.array(["a", "a", "a", "b", "b", "b", "b"])}
    noisy = np.array([1, 0, 0, 1, 0, 1, 0], dtype=bool)
    score = np.array([0.9, 0.2, 0.6, 0.3, 0.8, 0.5, 0.1])
    out = group_noise_detection({"noise_score": score}, noisy, groups)["g"]
    # a: the noisy sample has the top score -> 1.  b: noisy 0.3, 0.5 vs clean 0.8, 0.1 -> 2 of 4 pairs.
    assert out["groups"]["a"]["auroc"]["noise_score"] == pytest.approx(1.0)
    assert out["groups"]["b"]["auroc"]["noise_score"] == pytest.approx(0.5)
    assert out["groups"]["a"]["noise_rate"] == pytest.approx(1 / 3) and out["groups"]["b"]["n"] == 4
    assert out["auroc_gap"]["noise_score"] == pytest.approx(0.5)


# ------------------------------------------------------------------ groups from real formats
def test_affectnet_plus_meta_data_age_gender_race(tmp_path):
    ages = [2, 15, 25.5, 45, 80, None, 39, 40]
    race = {"asian": 0.1, "black": 0.2, "white": 0.6, "indian": 0.1}

    def meta(folder, i):
        return {"age": ages[i % 8], "race": race if i % 2 == 0 else None,
                "gender": {"male": 0.5, "female": 0.5} if i == 3 else {"male": 0.9, "female": 0.3}}
    root = formats.affectnet_plus(tmp_path / "anp", list(range(8)) * 2, list(range(8)), meta)
    splits = build_splits(cfg_for("affectnet_plus", root, "data.num_classes=8", "data.val_fraction=0.5"))
    test = splits["test"]
    assert test.groups["age"].tolist() == ["0-3", "4-19", "20-39", "40-69", "70+", "", "20-39", "40-69"]
    assert test.groups["gender"].tolist() == ["male"] * 3 + ["female"] + ["male"] * 4   # a tie: the first in order
    assert test.groups["race"].tolist() == ["white", "", "white", "", "white", "", "white", ""]
    assert test.info["group_prob_columns"] == {"gender": ["female", "male"], "race": ["asian", "black", "indian", "white"]}
    assert test.group_probs["gender"][0] == pytest.approx([0.25, 0.75])         # normalised 0.3 : 0.9
    assert test.group_probs["race"][0] == pytest.approx([0.1, 0.2, 0.1, 0.6]) and np.isnan(test.group_probs["race"][1]).all()
    train = splits["train"]   # held out through select: groups and probabilities stay row-aligned
    assert np.array_equal(np.isclose(train.group_probs["race"][:, 3], 0.6), train.groups["race"] == "white")

    bad = formats.affectnet_plus(tmp_path / "bad", list(range(8)) * 2, list(range(8)),
                                 lambda folder, i: {"age": "thirty"} if (folder, i) == ("validation_set", 5) else {})
    with pytest.raises(DataError, match=r"validation_set/annotations/5.json: malformed annotation: meta-data.age 'thirty'"):
        build_splits(cfg_for("affectnet_plus", bad, "data.num_classes=8"), ("test",))
    bad = formats.affectnet_plus(tmp_path / "bad2", list(range(8)) * 2, list(range(8)),
                                 lambda folder, i: {"gender": {"female": -1, "male": 2}} if i == 2 else {})
    with pytest.raises(DataError, match=r"annotations/2.json: malformed annotation: meta-data.gender"):
        build_splits(cfg_for("affectnet_plus", bad, "data.num_classes=8"), ("test",))


def test_rafdb_manual_attribute_files(tmp_path):
    root = formats.rafdb(tmp_path / "raf", RAF_TRAIN, RAF_TEST, distribution=False)
    codes = {f"test_{i + 1:04d}": (i % 3, (i + 1) % 3, i % 5) for i in range(7)}
    codes.update({f"train_{i + 1:05d}": (0, 2, 2) for i in range(1, 21)})   # train_00001 has no file
    folder = formats.rafdb_manual(root, codes)
    splits = build_splits(cfg_for("rafdb", root))
    test = splits["test"]
    assert test.groups["gender"].tolist() == ["male", "female", "unsure", "male", "female", "unsure", "male"]
    assert test.groups["race"].tolist() == ["african-american", "asian", "caucasian", "african-american", "asian",
                                            "caucasian", "african-american"]
    assert test.groups["age"].tolist() == ["0-3", "4-19", "20-39", "40-69", "70+", "0-3", "4-19"]
    train_all = np.concatenate([splits["train"].groups["race"], splits["val"].groups["race"]])
    assert sorted(train_all.tolist()) == [""] + ["asian"] * 20        # the image without a file: unknown
    elsewhere = tmp_path / "attributes"
    elsewhere.mkdir()
    with pytest.raises(DataError, match=r"attributes_dir .*attributes: no attribute file for any of the 7 test "
                                        r"images \(looked for e.g. test_0001_manu_attri.txt\)"):
        build_splits(cfg_for("rafdb", root, f"data.rafdb.attributes_dir={elsewhere}"), ("test",))

    lines = (folder / "test_0003_manu_attri.txt").read_text().splitlines()
    lines[6] = "5"
    (folder / "test_0003_manu_attri.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test_0003_manu_attri.txt:7: unknown attribute: race '5'"):
        build_splits(cfg_for("rafdb", root), ("test",))
    skipped = build_splits(cfg_for("rafdb", root, "data.on_error=skip"), ("test",))["test"]
    assert len(skipped) == 6 and skipped.info["skipped"]["by_reason"] == {"unknown attribute": 1}
    lines[6], lines[1] = "1", "104.5"
    (folder / "test_0003_manu_attri.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test_0003_manu_attri.txt:2: malformed attribute file: landmark line"):
        build_splits(cfg_for("rafdb", root), ("test",))
    (folder / "test_0003_manu_attri.txt").write_bytes(b"\xff\xfe104.5 70.2\n")   # not text at all
    with pytest.raises(DataError, match=r"test_0003_manu_attri.txt:1: malformed attribute file: not text"):
        build_splits(cfg_for("rafdb", root), ("test",))


def test_manifest_group_columns(tmp_path):
    rows = [[str(i % 7), "train" if i < 7 else "test", ["female", "male", ""][i % 3], "20-39"] for i in range(8)]
    manifest = formats.manifest(tmp_path, ["label", "split", "group_gender", "group_age"], rows)
    lines = manifest.read_text().splitlines()
    cfg = load_config(None, ["data.name=manifest", f"data.root={manifest}", "data.num_classes=7",
                             "data.image_size=32", "log.progress=false", "data.val_fraction=0"])
    train = build_splits(cfg, ("train",))["train"]
    assert train.groups["gender"].tolist() == ["female", "male", "", "female", "male", "", "female"]
    assert set(train.groups["age"].tolist()) == {"20-39"}
    manifest.write_text("\n".join(lines[:3] + ['img/2.jpg,2,train,"[0.4, 0.6]",20-39']) + "\n")
    with pytest.raises(DataError, match=r"m.csv:4: malformed line: group_gender '\[0.4, 0.6\]'"):
        build_splits(cfg, ("train",))
    manifest.write_text("\n".join([lines[0] + ",group_"] + [line + ",x" for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"m.csv:1: group column 'group_'"):
        build_splits(cfg, ("train",))


# ------------------------------------------------------------------ the synthetic world
def test_synthetic_groups_are_visible_in_the_proportions_asked_and_leave_the_truth_alone():
    spec = SyntheticSpec(image_size=32, seed=4)
    plain = generate_split(spec, "val", 200)
    grouped = generate_split(spec, "val", 200, groups={"skin_tone": [0.7, 0.3], "face_shape": [0.25, 0.25, 0.5]})
    assert plain.groups == {}
    tone, shape = grouped.groups["skin_tone"], grouped.groups["face_shape"]
    assert (tone == "light").sum() == 140 and (tone == "dark").sum() == 60                    # exact proportions
    assert [(shape == g).sum() for g in ("narrow", "medium", "wide")] == [50, 50, 100]
    for field in ("labels", "va", "dist", "aus"):     # the truth and the labels drawn from it do not move
        assert np.array_equal(getattr(plain, field), getattr(grouped, field))
    face = grouped.images[:, 14:18, 10:22].astype(float).mean((1, 2, 3))       # cheeks, below the eyes
    assert face[tone == "light"].mean() > face[tone == "dark"].mean() + 50
    marks = grouped.landmarks      # jaw width over eye distance: pose and scale cancel
    ratio = np.linalg.norm(marks[:, 16] - marks[:, 0], axis=1) / np.linalg.norm(marks[:, 45] - marks[:, 36], axis=1)
    assert ratio[shape == "narrow"].mean() < ratio[shape == "medium"].mean() < ratio[shape == "wide"].mean()
    again = generate_split(spec, "val", 200, groups={"skin_tone": [0.7, 0.3]})
    assert np.array_equal(again.groups["skin_tone"], tone)                   # seeded
    with pytest.raises(ValueError, match=r"data.synthetic.groups.skin_tone=\[0.6, 0.6\]"):
        generate_split(spec, "val", 10, groups={"skin_tone": [0.6, 0.6]})


def test_synthetic_groups_through_the_config_and_cache():
    base = ["data.image_size=32", "data.synthetic.num_train=120", "data.synthetic.num_val=40",
            "data.synthetic.num_test=60", "log.progress=false"]
    plain = build_splits(load_config(None, base))
    grouped = build_splits(load_config(None, [*base, "data.synthetic.groups.skin_tone=[0.5,0.5]"]))
    assert plain["train"].groups == {}
    assert [(grouped[s].groups["skin_tone"] == "dark").sum() for s in ("train", "val", "test")] == [60, 20, 30]
    assert np.array_equal(plain["test"].labels, grouped["test"].labels)


# ------------------------------------------------------------------ group-dependent noise
def test_group_dependent_noise_realises_each_groups_rate():
    tone = np.array(["light"] * 1000 + ["dark"] * 600 + ["medium"] * 400)
    data = with_groups(np.tile(np.arange(8), 250), {"skin_tone": tone})
    noisy = inject(data, "symmetric", 0.2, seed=3, group_attribute="skin_tone", group_rates={"light": 0.1, "dark": 0.4})
    flipped = noisy.labels != noisy.clean_labels
    assert [flipped[tone == g].sum() for g in ("light", "dark", "medium")] == [100, 240, 80]   # medium: the base rate
    report = noisy.info["noise"]["by_group"]
    assert report["attribute"] == "skin_tone"
    assert report["groups"]["dark"] == {"rate": 0.4, "n": 600, "realised_rate": pytest.approx(0.4)}
    assert noisy.info["noise"]["realised_rate"] == pytest.approx(420 / 2000)
    again = inject(data, "symmetric", 0.2, seed=3, group_attribute="skin_tone", group_rates={"light": 0.1, "dark": 0.4})
    assert np.array_equal(again.labels, noisy.labels)
    pair = inject(data, "asymmetric", 0.0, seed=0, group_attribute="skin_tone", group_rates={"dark": 0.4})
    moved = pair.labels != pair.clean_labels
    assert moved.sum() == 8 * 30 and set(tone[moved]) == {"dark"}          # 40 % of each class's 75 dark samples
    assert all(PAIR_MAP[c] == n for c, n in zip(pair.clean_labels[moved], pair.labels[moved]))
    with pytest.raises(ValueError, match="group-dependent noise takes a rate-based data.noise.type"):
        inject(data, "annotator", 0.0, seed=0, group_attribute="skin_tone", group_rates={"dark": 0.4})
    with pytest.raises(ValueError, match=r"data.noise.groups: \['tan'\] not among"):
        inject(data, "symmetric", 0.0, seed=0, group_attribute="skin_tone", group_rates={"tan": 0.4})
    with pytest.raises(ValueError, match="no such attribute"):
        inject(data, "symmetric", 0.0, seed=0, group_attribute="race", group_rates={"dark": 0.4})


def test_group_dependent_label_noise_copies_no_images():
    # symmetric / asymmetric noise reads the labels alone: a group's images (memory-mapped, GBs on
    # AffectNet) used to be copied into memory per group, 12 MB here for 24 MB of images.
    n = 2000
    data = FERData(images=np.zeros((n, 64, 64, 3), np.uint8), labels=np.arange(n) % 8, num_classes=8,
                   names=np.array([f"s{i}" for i in range(n)]), groups={"g": np.array(["a", "b"] * (n // 2))})
    for noise_type in ("symmetric", "asymmetric"):
        tracemalloc.start()
        inject(data, noise_type, 0.2, seed=0, group_attribute="g", group_rates={"a": 0.1})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2_000_000, (noise_type, peak)


# ------------------------------------------------------------------ group mixes
def test_group_mix_keeps_the_size_and_draws_the_mix_seeded():
    tone = np.array(["light", "dark", "light", "light", "dark"] * 200)       # 600 light, 400 dark
    data = with_groups(np.arange(1000) % 8, {"skin_tone": tone})
    mixed = sample_group_mix(data, "skin_tone", ["light", "dark"], [0.9, 0.1], 500, seed=1)
    assert len(mixed) == 500 and mixed.info["group_mix"]["counts"] == {"dark": 50, "light": 450}
    assert mixed.info["group_mix"]["pool"] == {"dark": 400, "light": 600} and mixed.info["group_mix"]["seed"] == 1
    assert list(mixed.names) == sorted(mixed.names, key=lambda n: int(n[1:]))   # original order kept
    assert np.array_equal(sample_group_mix(data, "skin_tone", ["light", "dark"], [0.9, 0.1], 500, 1).names, mixed.names)
    assert not np.array_equal(sample_group_mix(data, "skin_tone", ["light", "dark"], [0.9, 0.1], 500, 2).names,
                              mixed.names)
    odd = sample_group_mix(data, "skin_tone", ["light", "dark"], [0.5, 0.5], 7, seed=0)
    assert odd.info["group_mix"]["counts"] == {"dark": 3, "light": 4}   # 3.5 / 3.5: ties to the first group
    with pytest.raises(ValueError, match=r"450 of 500 training samples must come from skin_tone=dark.*only 400"):
        sample_group_mix(data, "skin_tone", ["light", "dark"], [0.1, 0.9], 500, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        sample_group_mix(data, "skin_tone", ["light", "dark"], [0.9, 0.2], 500, seed=0)
    # a size written 5e2 arrives as a float: the same mix; a fractional one is an error
    assert np.array_equal(sample_group_mix(data, "skin_tone", ["light", "dark"], [0.9, 0.1], 5e2, 1).names, mixed.names)
    with pytest.raises(ValueError, match="data.group_mix.size must be a positive whole number"):
        sample_group_mix(data, "skin_tone", ["light", "dark"], [0.9, 0.1], 500.5, seed=0)


def test_group_counts_keep_the_size_when_the_proportions_sum_a_hair_above_one():
    # sample_group_mix and the synthetic groups accept sums within 1e-6 of 1; at a million samples
    # the floors of 500,001 + 500,000 used to overshoot the size, and the rest went negative.
    counts = counts_for([0.500001, 0.5], 1_000_000)
    assert counts.sum() == 1_000_000 and (counts >= 0).all()
    assert counts_for([0.9, 0.1], 500).tolist() == [450, 50]


def test_group_names_given_as_numbers_match_the_groups_read_as_text():
    # a manifest's group_age column of codes 0 / 1 loads as '0' / '1'; YAML and the command line
    # make data.group_mix.groups=[0,1] and data.noise.groups=[1] numbers, which matched nothing
    data = with_groups(np.arange(100) % 7, {"age": np.array(["0", "1"] * 50)}, num_classes=7)
    mixed = sample_group_mix(data, "age", [0, 1], [0.5, 0.5], 20, seed=0)
    assert mixed.info["group_mix"]["counts"] == {"0": 10, "1": 10}
    cfg = load_config(None, ["data.noise.type=symmetric", "data.noise.rate=0.1", "data.noise.group_attribute=age",
                             "data.noise.groups=[1]", "data.noise.group_rates=[0.4]"])
    noisy = apply_noise(data, cfg.data.noise)
    assert noisy.info["noise"]["by_group"]["groups"]["1"]["rate"] == 0.4


# ------------------------------------------------------------------ summaries, eval, report
def test_train_eval_and_report_carry_per_group_numbers(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = tiny(run, "optim.epochs=1", "model.width=8", "data.synthetic.num_train=400",
                     "data.synthetic.num_val=80", "data.synthetic.num_test=160", "data.synthetic.groups.skin_tone=[0.5,0.5]",
                     "data.group_mix.attribute=skin_tone", "data.group_mix.groups=[light,dark]",
                     "data.group_mix.proportions=[0.75,0.25]", "data.group_mix.size=256",
                     "data.noise.type=symmetric", "data.noise.rate=0.1", "data.noise.group_attribute=skin_tone",
                     "data.noise.groups=[dark]", "data.noise.group_rates=[0.4]")
    assert main(["train", *overrides]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["groups"]["counts"]["train"] == {"skin_tone": {"dark": 64, "light": 192}}
    assert summary["groups"]["counts"]["test"] == {"skin_tone": {"dark": 80, "light": 80}}
    assert summary["groups"]["mix"]["proportions"] == [0.75, 0.25]
    by_group = summary["noise"]["by_group"]["groups"]
    assert by_group["dark"]["realised_rate"] == pytest.approx(26 / 64) and by_group["light"]["rate"] == 0.1
    test_groups = summary["final"]["test"]["groups"]["skin_tone"]
    assert {g: e["n"] for g, e in test_groups["groups"].items()} == {"dark": 80, "light": 80}
    assert "demographic_parity_difference" in test_groups and "kl" in test_groups["groups"]["dark"]
    detection = summary["groups"]["noise_detection"]["skin_tone"]["groups"]["dark"]
    assert detection["noise_rate"] == pytest.approx(26 / 64) and "model_noise_score" in detection["auroc"]
    assert "test: by skin_tone" in capsys.readouterr().out

    assert main(["eval", str(run / "checkpoint.pt"), "--split", "test"]) == 0
    assert "test: by skin_tone" in capsys.readouterr().out
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Groups: skin_tone" in md and "| acc dark | acc light | F1 dark | F1 light |" in md
    assert "dark 41% / light 10%" in md and "Test accuracy by skin_tone" in md


def test_cross_gap_matrices():
    cell = {"race": {"accuracy_gap": 0.2, "f1_gap": 0.1, "demographic_parity_difference": 0.3,
                     "equalised_odds_difference": 0.4}}
    matrices = cross_gap_matrices(["a", "b"], [[cell, {}], [{}, cell]])
    assert matrices["race"]["accuracy_gap"] == [[0.2, None], [None, 0.2]]
    text = cross_markdown({"datasets": ["a", "b"], "groups": matrices})
    assert "demographic parity difference by race" in text and "| a | 0.2000 | – |" in text


def test_report_tells_group_dependent_noise_from_uniform_noise_of_the_same_rate(tmp_path):
    summaries = {}
    for name, by_group in (("uniform", None), ("by-group", {"attribute": "skin_tone", "groups": {
            "dark": {"rate": 0.4, "n": 500, "realised_rate": 0.4}, "light": {"rate": 0.1, "n": 500, "realised_rate": 0.1}}})):
        run = tmp_path / name
        run.mkdir()
        asked = {"type": "symmetric", "rate": 0.1 if by_group else 0.25, "group_attribute": "skin_tone" if by_group else None}
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "method": {"name": "ce"}, "data": {"noise": asked}}))
        noise = {"type": "symmetric", "seed": 0, "realised_rate": 0.25, **({"by_group": by_group} if by_group else {})}
        summaries[run] = {"dataset": "synthetic", "method": "ce", "seed": 0, "noise": noise}
    groups, _ = group_runs(sorted(summaries), summaries)
    assert sorted(noise_label(k.noise_type, k.rate) for k in groups) == [
        "symmetric (skin_tone dark 40% / light 10%) 25%", "symmetric 25%"]
