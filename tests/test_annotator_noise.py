"""Issue 19: reports tell runs apart by realised noise, and annotator noise drawn from each
sample's own label distribution."""
import json

import numpy as np
import pytest
import yaml

import formats
from conftest import tiny
from ldl.cli import main
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.dataset import FERData
from ldl.data.noise import distribution_argmax, draw_labels, inject, sharpen, transition_matrix
from ldl.report import group_runs, noise_label


def _fake_run(folder, noise_cfg, noise_summary, seed=0):
    """A run folder with just what grouping reads: config.yaml and summary.json's keys."""
    folder.mkdir()
    config = {"seed": seed, "run": {"dir": str(folder)}, "data": {"name": "synthetic", "noise": noise_cfg},
              "method": {"name": "ce"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder, {"dataset": "synthetic", "method": "ce", "seed": seed, "noise": noise_summary}


def test_groups_by_realised_rate_and_seeds_of_a_setting_stay_together(tmp_path):
    runs = dict([
        # one annotator setting, two noise seeds: 27.4 % and 28.7 % realised -> one row at 28 %
        _fake_run(tmp_path / "ann-0", {"type": "annotator", "seed": 0},
                  {"type": "annotator", "seed": 0, "realised_rate": 0.274}),
        _fake_run(tmp_path / "ann-1", {"type": "annotator", "seed": 1},
                  {"type": "annotator", "seed": 1, "realised_rate": 0.287}),
        # a label file has no configured rate (the old report called it clean)
        _fake_run(tmp_path / "file", {"type": "file", "file": "a.csv"},
                  {"type": "file", "file": "a.csv", "realised_rate": 0.004}),
        # before realised rates were saved: the configured rate
        _fake_run(tmp_path / "sym", {"type": "symmetric", "rate": 0.3}, {"type": "symmetric", "rate": 0.3}),
        # asked for noise, got none: clean
        _fake_run(tmp_path / "zero", {"type": "symmetric", "rate": 0.0},
                  {"type": "symmetric", "rate": 0.0, "realised_rate": 0.0}),
    ])
    groups, _ = group_runs(sorted(runs), runs)
    rows = {noise_label(k.noise_type, k.rate): sorted(r.name for r in members) for k, members in groups.items()}
    assert rows == {"annotator 28%": ["ann-0", "ann-1"], "file 0.4%": ["file"], "symmetric 30%": ["sym"],
                    "clean": ["zero"]}
    assert {k.method for k in groups} == {"ce"}   # noise settings never leak into the method label


def test_report_puts_a_label_file_run_at_its_realised_rate(tmp_path, capsys):
    base = [o for o in tiny(tmp_path / "unused", "optim.epochs=1", "data.synthetic.num_train=300", "model.width=8")
            if not o.startswith("run.dir")]
    noisy = tmp_path / "noisy.csv"
    # A label file with 96 of 300 labels (32 %) moved to another class, as a real label file would be.
    assert main(["noise", "--type", "symmetric", "--rate", "0.32", "--seed", "3", "--out", str(noisy), *base]) == 0
    # ldl noise says beside the file how it was made; a label file from elsewhere has no such note
    assert json.loads((tmp_path / "noisy.csv.json").read_text())["type"] == "symmetric"
    (tmp_path / "noisy.csv.json").write_text("{type: symmetric")
    capsys.readouterr()
    assert main(["train", *base, f"run.dir={tmp_path / 'bad-note'}", "data.noise.type=file",
                 f"data.noise.file={noisy}"]) != 0
    assert "noisy.csv.json:1: not the JSON note" in capsys.readouterr().out
    (tmp_path / "noisy.csv.json").unlink()
    sweep = tmp_path / "sweep"
    for name, extra in (("clean", []), ("file", ["data.noise.type=file", f"data.noise.file={noisy}"])):
        assert main(["train", *base, f"run.dir={sweep / name}", *extra]) == 0
    summary = json.loads((sweep / "file" / "summary.json").read_text())
    assert summary["noise"]["realised_rate"] == pytest.approx(0.32)
    assert main(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| synthetic | ce | file 32% | 1 |" in md and "| synthetic | ce | clean | 1 |" in md
    assert md.count("| clean |") == 1
    assert "### Label noise: synthetic, file 32% (clean label by given label)" in md
    assert "### Accuracy against realised noise rate, shared protocol" in md
    assert "Memorisation: synthetic, file 32%, shared protocol" in md


# --- annotator noise ---------------------------------------------------------------------------

# Three faces over 3 classes, with the dataset's own labels [0, 2, 2]:
#   s0 [0.6, 0.3, 0.1]  argmax 0
#   s1 [0.2, 0.4, 0.4]  tie of 1 and 2; the dataset's label 2 is among them -> 2
#   s2 [0.4, 0.4, 0.2]  tie of 0 and 1; the dataset's label 2 is not -> the first, 0
Q = np.array([[0.6, 0.3, 0.1], [0.2, 0.4, 0.4], [0.4, 0.4, 0.2]])
GIVEN = np.array([0, 2, 2])


def three_faces(dist=Q, soft=None):
    return FERData(images=np.zeros((3, 2, 2, 3), np.uint8), labels=GIVEN, num_classes=3,
                   names=np.array(["a", "b", "c"]), dist=dist, soft=soft)


def test_three_faces_by_hand():
    clean = distribution_argmax(Q, GIVEN)
    assert clean.tolist() == [0, 2, 0]
    # T = 0.5 squares q: s0 [.36, .09, .01] / .46, s1 [.04, .16, .16] / .36, s2 [.16, .16, .04] / .36
    assert sharpen(Q, 0.5)[0] == pytest.approx([0.36 / 0.46, 0.09 / 0.46, 0.01 / 0.46])
    assert sharpen(Q, 1.0) == pytest.approx(Q)
    # inverse CDF: s0 cdf [.6, .9, 1] with u .65 -> 1; s1 cdf [.2, .6, 1] with u .1 -> 0;
    # s2 cdf [.4, .8, 1] with u .3 -> 0
    noisy = draw_labels(Q, np.array([0.65, 0.1, 0.3]))
    assert noisy.tolist() == [1, 0, 0]
    # two of three labels differ from the clean ones; clean 0 went to 1 once and stayed once,
    # clean 2 went to 0, clean 1 never occurs
    assert (noisy != clean).mean() == pytest.approx(2 / 3)
    assert transition_matrix(clean, noisy, 3).tolist() == [[0.5, 0.5, 0], [0, 0, 0], [1, 0, 0]]
    # a class without mass is never drawn, even at the CDF's edges
    assert draw_labels(np.array([[0.0, 1.0, 0.0]] * 2), np.array([0.0, 1 - 1e-12])).tolist() == [1, 1]


def test_rate_noise_reports_labels_off_the_argmax_on_the_same_reference_as_annotator_noise():
    # argmax [0, 2, 0] (ties: s1 to its given 2, s2 to the first class): the given [0, 2, 2] are
    # already 1/3 off it, before any flip
    untouched = inject(three_faces(), "symmetric", 0.0, seed=0).info["noise"]
    assert untouched["realised_rate"] == 0
    assert untouched["off_argmax_rate"] == pytest.approx(1 / 3)
    assert untouched["argmax_differs_from_dataset_label"] == pytest.approx(1 / 3)
    flipped = inject(three_faces(), "symmetric", 1 / 3, seed=0)
    assert flipped.info["noise"]["realised_rate"] == pytest.approx(1 / 3)
    assert flipped.info["noise"]["off_argmax_rate"] == pytest.approx((flipped.labels != [0, 2, 0]).mean())
    annotator = inject(three_faces(), "annotator", 0.0, seed=5)
    assert annotator.info["noise"]["off_argmax_rate"] == annotator.info["noise"]["realised_rate"]
    no_distribution = FERData(images=np.zeros((3, 2, 2, 3), np.uint8), labels=GIVEN, num_classes=3,
                              names=np.array(["a", "b", "c"]))
    assert "off_argmax_rate" not in inject(no_distribution, "symmetric", 1 / 3, seed=0).info["noise"]


def test_annotator_expected_rate_temperature_and_report():
    noisy = inject(three_faces(), "annotator", 0.0, seed=5)
    report = noisy.info["noise"]
    assert noisy.clean_labels.tolist() == [0, 2, 0]
    # 1 - q(clean): 0.4, 0.6, 0.6 -> 1.6 / 3
    assert report["expected_rate"] == pytest.approx(1.6 / 3)
    assert report["source"] == "dist" and report["argmax_differs_from_dataset_label"] == pytest.approx(1 / 3)
    assert report["realised_rate"] == pytest.approx((noisy.labels != noisy.clean_labels).mean())
    assert np.allclose(np.array(report["transition_matrix"]).sum(1), [1, 0, 1])
    # T = 0.5: 1 - .36/.46, 1 - .16/.36, 1 - .16/.36 -> (0.2174 + 0.5556 + 0.5556) / 3 = 0.4428
    sharper = inject(three_faces(), "annotator", 0.0, seed=5, temperature=0.5).info["noise"]
    assert sharper["expected_rate"] == pytest.approx((1 - 0.36 / 0.46 + 2 * (1 - 0.16 / 0.36)) / 3)
    assert sharper["temperature"] == 0.5
    # soft labels serve when there is no distribution
    assert inject(three_faces(dist=None, soft=Q), "annotator", 0.0, seed=0).info["noise"]["source"] == "soft"


def test_annotator_is_seeded_and_realises_its_expected_rate():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(7, 0.5), size=20000)
    data = FERData(images=np.zeros((20000, 1, 1, 3), np.uint8), labels=q.argmax(1), num_classes=7,
                   names=np.arange(20000).astype(str), dist=q.astype(np.float32))
    a, b = inject(data, "annotator", 0.0, seed=1), inject(data, "annotator", 0.0, seed=1)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, inject(data, "annotator", 0.0, seed=2).labels)
    noise = a.info["noise"]
    assert noise["realised_rate"] == pytest.approx(noise["expected_rate"], abs=0.01)
    rates = [inject(data, "annotator", 0.0, seed=1, temperature=t).info["noise"]["realised_rate"] for t in (0.25, 1, 4)]
    assert rates[0] < rates[1] < rates[2]
    # T -> 0 is the argmax: only near-ties (top two within a factor ~1.01) still flip
    assert inject(data, "annotator", 0.0, seed=1, temperature=1e-3).info["noise"]["realised_rate"] < 0.005


def test_annotator_errors():
    with pytest.raises(ValueError, match="the rafdb training split has none"):
        inject(three_faces(dist=None), "annotator", 0.0, seed=0, dataset="rafdb")
    with pytest.raises(ValueError, match=r"data.noise.rate=0.2 does not apply to annotator noise"):
        inject(three_faces(), "annotator", 0.2, seed=0)
    with pytest.raises(ValueError, match=r"data.noise.temperature must be > 0, got 0"):
        inject(three_faces(), "annotator", 0.0, seed=0, temperature=0)


def _annotated(name, root, *extra):
    cfg = load_config(None, [f"data.name={name}", f"data.root={root}", "data.image_size=32", "log.progress=false",
                             "data.noise.type=annotator", *extra])
    return build_splits(cfg, ("train",))["train"]


def test_annotator_on_ferplus_votes(tmp_path):
    rows = []
    for c in range(8):   # 6 votes for emotion column c, 4 for column c+1: q = 0.6 / 0.4
        votes = [0] * 10
        votes[c], votes[(c + 1) % 8] = 6, 4
        rows += [("Training", f"fer{len(rows):07d}.png", votes), ("PrivateTest", f"fer{len(rows) + 1:07d}.png", votes)]
    # a 4-4-2 tie kept by the crossentropy rule: its label (the first column, neutral) wins the tie
    rows.append(("Training", f"fer{len(rows):07d}.png", [4, 4, 2, 0, 0, 0, 0, 0, 0, 0]))
    train = _annotated("ferplus", formats.ferplus(tmp_path / "ferplus", rows), "data.num_classes=8",
                       "data.ferplus.label_mode=crossentropy", "data.noise.seed=3")
    noise = train.info["noise"]
    assert np.array_equal(train.clean_labels, np.argmax(train.dist, 1))     # no other tie
    assert train.clean_labels[-1] == 0 and train.dist[-1, :2].tolist() == pytest.approx([0.4, 0.4])
    assert noise["expected_rate"] == pytest.approx((8 * 0.4 + 0.6) / 9)
    assert np.all(train.dist[np.arange(9), train.labels] > 0)   # every drawn label got votes


def test_annotator_on_rafdb_distribution_file_and_affectnet_plus_soft_labels(tmp_path):
    raf = formats.rafdb(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 3, [1, 2, 3, 4, 5, 6, 7])
    train = _annotated("rafdb", raf, "data.num_classes=7", "data.val_fraction=0.34")
    # 0.727273 on the label's class, 0.272727 on the next native column
    assert train.info["noise"]["source"] == "dist"
    assert train.info["noise"]["expected_rate"] == pytest.approx(0.272727, abs=1e-5)
    assert train.info["noise"]["argmax_differs_from_dataset_label"] == 0
    assert np.all(train.dist[np.arange(len(train)), train.labels] > 0.2)
    anp = formats.affectnet_plus(tmp_path / "anp", list(range(8)) * 2, list(range(8)))
    train = _annotated("affectnet_plus", anp, "data.num_classes=8", "data.val_fraction=0.5")
    assert train.info["noise"]["source"] == "soft"
    assert train.info["noise"]["expected_rate"] == pytest.approx(0.14, abs=1e-5)   # 0.86 on the human label


def test_annotator_on_synthetic_and_clear_error_without_distributions(tmp_path):
    train = _annotated("synthetic", "unused", "data.synthetic.num_train=300", "data.synthetic.num_val=50",
                       "data.synthetic.num_test=50")
    assert np.array_equal(train.clean_labels, train.dist.argmax(1))
    assert 0 < train.info["noise"]["realised_rate"] < 0.6
    raf = formats.rafdb(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 3, [1, 2, 3, 4, 5, 6, 7], distribution=False)
    with pytest.raises(ValueError, match=r"data.noise.type=annotator draws each label from the sample's own label "
                                         r"distribution, but the rafdb training split has none"):
        _annotated("rafdb", raf, "data.num_classes=7", "data.val_fraction=0.34")


def test_ldl_noise_annotator_writes_a_label_file(tmp_path, capsys):
    base = ["data.image_size=32", "data.synthetic.num_train=300", "data.synthetic.num_val=50",
            "data.synthetic.num_test=50", "log.progress=false"]
    out = tmp_path / "annotator.csv"
    assert main(["noise", "--type", "annotator", "--temperature", "2", "--seed", "4", "--out", str(out), *base]) == 0
    assert "annotator noise temperature 2: realised rate" in capsys.readouterr().out
    again = build_splits(load_config(None, base + ["data.noise.type=file", f"data.noise.file={out}"]), ("train",))["train"]
    direct = build_splits(load_config(None, base + ["data.noise.type=annotator", "data.noise.temperature=2",
                                                    "data.noise.seed=4"]), ("train",))["train"]
    assert np.array_equal(again.labels, direct.labels)
    assert main(["noise", "--type", "annotator", "--rate", "0.2", "--out", str(out), *base]) == 2
    assert main(["noise", "--type", "symmetric", "--out", str(out), *base]) == 2
    assert "--rate is required for symmetric" in capsys.readouterr().out


def test_annotator_on_manifest_distribution_columns(tmp_path):
    lines = ["path,label,split,p_Neutral,p_Happy,p_Sad"]
    for i in range(7):
        formats.jpeg(tmp_path / "img" / f"{i}.jpg", size=40)
        lines.append(f"img/{i}.jpg,{i},train,0.5,0.5,0")   # Neutral and Happy tie: each face's own label wins
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    train = _annotated("manifest", manifest, "data.num_classes=7", "data.val_fraction=0")
    # labels 0 and 1 are among the tied classes and stay clean; 2..6 are not: the first, Neutral
    assert train.clean_labels.tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert np.isin(train.labels, [0, 1]).all()
    assert train.info["noise"]["expected_rate"] == pytest.approx(0.5)


def test_annotator_on_teacher_labels_draws_from_the_carried_truth(tmp_path):
    # `ldl teacher label` output: soft labels from the teacher, the world's truth in meta-data
    anp = formats.affectnet_plus(tmp_path / "anp", list(range(8)) * 2, list(range(8)))
    for path in (anp / "human_annotated").rglob("*.json"):
        record = json.loads(path.read_text())
        truth = np.zeros(8)
        truth[record["human-label"]], truth[(record["human-label"] + 1) % 8] = 0.7, 0.3
        record["meta-data"]["label-distribution"] = truth.tolist()
        path.write_text(json.dumps(record))
    train = _annotated("affectnet_plus", anp, "data.num_classes=8", "data.val_fraction=0.5")
    assert train.info["noise"]["source"] == "dist" and train.soft is not None
    assert train.info["noise"]["expected_rate"] == pytest.approx(0.3, abs=1e-5)   # not the soft label's 0.14
