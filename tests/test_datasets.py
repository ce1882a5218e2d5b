import numpy as np
import pytest

import formats
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.loading import DataError

RAF_TRAIN = [1, 2, 3, 4, 5, 6, 7] * 3     # every class, 21 images
RAF_TEST = [1, 2, 3, 4, 5, 6, 7]


def cfg_for(name, root, *extra):
    return load_config(None, [f"data.name={name}", f"data.root={root}", "data.num_classes=7", "data.image_size=32",
                              "log.progress=false", "data.val_fraction=0.34", *extra])


def test_rafdb_reads_labels_distributions_and_maps_to_canonical(tmp_path):
    root = formats.rafdb(tmp_path / "raf-basic", RAF_TRAIN, RAF_TEST)
    splits = build_splits(cfg_for("rafdb", root))
    test = splits["test"]
    # RAF 1 Surprise -> 3, 4 Happiness -> 1, 7 Neutral -> 0 (DATASETS.md section 7)
    assert test.labels.tolist() == [3, 4, 5, 1, 2, 6, 0]
    assert len(splits["train"]) + len(splits["val"]) == 21 and len(splits["val"]) == 7
    assert set(splits["train"].names).isdisjoint(splits["val"].names)
    assert test.images.shape == (7, 32, 32, 3)
    # Distribution of test_0001 (label 1 Surprise): .727 on Surprise, .273 on Fear (native col 2)
    assert test.dist[0, 3] == pytest.approx(0.727273) and test.dist[0, 4] == pytest.approx(0.272727)
    assert np.allclose(test.dist.sum(1), 1, atol=1e-5)


def test_rafdb_has_no_contempt_under_the_8_class_protocol(tmp_path):
    root = formats.rafdb(tmp_path / "raf", RAF_TRAIN, RAF_TEST, distribution=False)
    with pytest.raises(DataError, match="no samples of class Contempt.*num_classes=7"):
        build_splits(cfg_for("rafdb", root, "data.num_classes=8"))


def test_bad_label_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    root = formats.rafdb(tmp_path / "raf", RAF_TRAIN, RAF_TEST, distribution=False)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().split("\n")
    lines[2] = "train_00003.jpg 9"
    lines[4] = "train_00005.jpg"
    label_file.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"list_patition_label.txt:3: unknown label: '9'"):
        build_splits(cfg_for("rafdb", root))
    splits = build_splits(cfg_for("rafdb", root, "data.on_error=skip"))
    skipped = splits["train"].info["skipped"]
    assert skipped["by_reason"] == {"unknown label": 1, "malformed line": 1}
    assert len(splits["train"]) + len(splits["val"]) == 19


def test_truncated_and_missing_images(tmp_path):
    root = formats.rafdb(tmp_path / "raf", RAF_TRAIN, RAF_TEST, distribution=False)
    broken = root / "Image" / "aligned" / "train_00002_aligned.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    (root / "Image" / "aligned" / "train_00004_aligned.jpg").unlink()
    with pytest.raises(DataError, match=r"list_patition_label.txt:[24]: (unreadable|missing) image: "
                                        r".*train_0000[24]_aligned.jpg"):
        build_splits(cfg_for("rafdb", root))
    splits = build_splits(cfg_for("rafdb", root, "data.on_error=skip"))
    assert splits["train"].info["skipped"]["by_reason"] == {"unreadable image": 1, "missing image": 1}
    assert len(splits["train"]) + len(splits["val"]) == 19


def test_missing_root_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="rafdb data.root not found"):
        build_splits(cfg_for("rafdb", tmp_path / "nowhere"))
    root = formats.rafdb(tmp_path / "raf", RAF_TRAIN, [], distribution=False)
    with pytest.raises(DataError, match="test split is empty"):
        build_splits(cfg_for("rafdb", root))


def test_affectnet_csv_release(tmp_path):
    train = [(c, 0.1 * c - 0.3, 0.2) for c in range(8)] * 2 + [(9, -2, -2), (10, -2, -2)]
    test = [(c, -2, -2) for c in range(8)]
    root = formats.affectnet_csv(tmp_path / "affectnet", train, test)
    splits = build_splits(cfg_for("affectnet", root, "data.num_classes=8", "data.val_fraction=0.5"))
    tr = splits["train"]
    assert sorted(tr.labels.tolist()) == list(range(8))  # codes 9/10 excluded, half held out
    assert np.isnan(splits["test"].va).all()               # -2 is the invalid marker
    assert tr.landmarks.shape == (8, 68, 2)
    assert tr.landmarks[0, 0, 0] == pytest.approx(10.5 * 32 / 120)   # rescaled to the cached size
    seven = build_splits(cfg_for("affectnet", root, "data.val_fraction=0.5"))
    assert 7 not in seven["test"].labels and len(seven["test"]) == 7


def test_affectnet_out_of_range_va(tmp_path):
    root = formats.affectnet_csv(tmp_path / "an", [(c, 0.0, 0.0) for c in range(8)] * 2 + [(1, 1.5, 0)],
                                 [(c, 0, 0) for c in range(8)])
    with pytest.raises(DataError, match=r"training.csv:18: out-of-range VA"):
        build_splits(cfg_for("affectnet", root))


def test_affectnet_npy_release(tmp_path):
    root = formats.affectnet_npy(tmp_path / "an", list(range(8)) * 2, list(range(8)))
    test = build_splits(cfg_for("affectnet", root, "data.num_classes=8", "data.val_fraction=0.5"))["test"]
    assert sorted(test.labels.tolist()) == list(range(8))
    assert np.allclose(test.va, [0.25, -0.5])


def test_affectnet_plus_json(tmp_path):
    root = formats.affectnet_plus(tmp_path / "anp", list(range(8)) * 2 + [9], list(range(8)))
    splits = build_splits(cfg_for("affectnet_plus", root, "data.num_classes=8", "data.val_fraction=0.5"))
    test = splits["test"]
    assert test.soft.shape == (8, 8) and np.allclose(test.soft.sum(1), 1)
    assert test.soft[3, 3] == pytest.approx(0.86) and test.subset.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert np.isnan(test.va[:, 1]).all() and np.allclose(test.va[:, 0], 0.5)


def test_sfew_folders(tmp_path):
    root = formats.sfew(tmp_path / "SFEW", per_class=3)
    splits = build_splits(cfg_for("sfew", root))
    assert sorted(set(splits["test"].labels.tolist())) == [0, 1, 2, 3, 4, 5, 6]
    (root / "Train" / "Train_Aligned_Faces" / "Bored").mkdir()
    formats.jpeg(root / "Train" / "Train_Aligned_Faces" / "Bored" / "x.png", fmt="PNG")
    with pytest.raises(DataError, match=r"Bored/x.png: unknown label"):
        build_splits(cfg_for("sfew", root))


def test_ferplus_majority_distribution_and_exclusions(tmp_path):
    rows = []
    for c in range(8):   # one clear winner per emotion column, for every usage
        for usage in ("Training", "PublicTest", "PrivateTest"):
            votes = [0] * 10
            votes[c], votes[(c + 1) % 8] = 8, 2
            rows.append((usage, f"fer{len(rows):07d}.png", votes))
    rows.append(("Training", "", [0] * 9 + [10]))                        # no image name: not a face
    rows.append(("Training", "fer9999998.png", [4, 4, 1, 0, 0, 0, 0, 0, 1, 0]))  # no majority
    root = formats.ferplus(tmp_path / "ferplus", rows)
    splits = build_splits(cfg_for("ferplus", root, "data.num_classes=8"))
    test = splits["test"]
    # vote column 2 (surprise) -> canonical 3, column 3 (sadness) -> 2
    assert test.labels.tolist() == [0, 1, 3, 2, 6, 5, 4, 7]
    assert test.dist[0].tolist() == pytest.approx([0.8, 0.2, 0, 0, 0, 0, 0, 0])
    assert splits["train"].info["excluded"] == {"no_face_name": 1, "unknown_or_nf": 1}


def test_manifest(tmp_path):
    lines = ["path,label,split,valence,arousal,p_Neutral,p_Happy"]
    for i in range(8):
        formats.jpeg(tmp_path / "img" / f"{i}.jpg", size=40)
        label = ["Neutral", "happy", "2", "Surprise", "Fear", "Disgust", "Anger", "Neutral"][i]
        lines.append(f"img/{i}.jpg,{label},{'train' if i < 7 else 'test'},0.1,0.2,0.5,0.5")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, ["data.name=manifest", f"data.root={manifest}", "data.num_classes=7",
                             "data.image_size=32", "log.progress=false", "data.val_fraction=0"])
    train = build_splits(cfg, ("train",))["train"]
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert train.dist[0, :2].tolist() == pytest.approx([0.5, 0.5])
    manifest.write_text("\n".join(lines[:3] + ["img/2.jpg,Bored,train,0,0,1,0"]) + "\n")
    with pytest.raises(DataError, match=r"m.csv:4: unknown label"):
        build_splits(cfg, ("train",))
    manifest.write_text("\n".join(lines[:3] + ["img/2.jpg,Sad,train,nan,0,1,0"]) + "\n")
    with pytest.raises(DataError, match=r"m.csv:4: out-of-range VA"):
        build_splits(cfg, ("train",))


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, cache_dir):
    root = formats.rafdb(tmp_path / "raf", RAF_TRAIN, RAF_TEST, distribution=False)
    cfg = cfg_for("rafdb", root)
    before = set(cache_dir.iterdir())
    first = build_splits(cfg, ("test",))["test"]
    made = set(cache_dir.iterdir()) - before
    assert len(made) == 1 and isinstance(first.images, np.memmap)
    build_splits(cfg, ("test",))
    assert set(cache_dir.iterdir()) - before == made          # reused
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("test_0001.jpg 1", "test_0001.jpg 2"))
    second = build_splits(cfg, ("test",))["test"]
    assert len(set(cache_dir.iterdir()) - before) == 2        # rebuilt for the new source
    assert second.labels[0] == 4 and first.labels[0] == 3
    build_splits(load_config(None, ["data.name=rafdb", f"data.root={root}", "data.num_classes=7",
                                    "data.image_size=40", "log.progress=false"]), ("test",))
    assert len(set(cache_dir.iterdir()) - before) == 3        # and for a new preprocessing
