"""Issue 16, the data and file-loading faults: each test is named after the fault it prevents."""
import os
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

import formats
from ldl import checkpoint
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.loading import DataError
from ldl.models import build_model


class RunsCode:
    """Unpickling this runs `touch marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path, marker, **entries):
    torch.save({**entries, "model": RunsCode(marker)}, path)
    return path


def refused(path):
    return pytest.raises(ValueError, match=re.escape(str(path)) + ".*refused")


def test_pickle_in_checkpoint_is_refused_by_eval_and_resume(tmp_path):
    from ldl.train import evaluate_checkpoint, run_training
    marker = tmp_path / "ran"
    (tmp_path / "run").mkdir()
    bad = malicious(tmp_path / "run" / "checkpoint.pt", marker, config={})
    with refused(bad):
        evaluate_checkpoint(bad)
    with refused(bad):
        run_training(load_config(None, []), resume_dir=tmp_path / "run")
    assert not marker.exists()


def test_pickle_in_pretrained_weights_is_refused(tmp_path):
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "weights.pt", marker)
    with refused(bad):
        build_model("resnet18", 7, width=8, stem="small", pretrained=str(bad))
    assert not marker.exists()


def test_pickle_in_va_regressor_is_refused(tmp_path):
    from ldl.va import annotate
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "va_regressor.pt", marker, head={}, config={})
    with refused(bad):
        annotate(tmp_path, load_config(None, []), tmp_path / "va.csv")
    assert not marker.exists()


def test_pickle_in_teacher_is_refused(tmp_path):
    from ldl.teacher import label_dataset
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "teacher.pt", marker, members=[], au_head={}, au_temperature=1.0, config={})
    with refused(bad):
        label_dataset(tmp_path, tmp_path / "out")
    assert not marker.exists()


def test_pickle_in_checkpoint_is_refused_but_our_own_loads(tmp_path):
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "bad.pt", marker, config={})
    with refused(bad):
        checkpoint.load(bad)
    assert not marker.exists()
    own = tmp_path / "checkpoint.pt"   # with numpy's RNG state, the one non-tensor our checkpoints hold
    checkpoint.save_atomic({"config": {"seed": 0}, "model": {"w": torch.ones(2)}, "rng": checkpoint.rng_state()}, own)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(checkpoint.load(own)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_empty_truncated_or_garbage_checkpoint_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    if content == "truncated":
        checkpoint.save_atomic({"config": {}, "model": {"w": torch.ones(1000)}}, path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a readable checkpoint"):
        checkpoint.load(path)


# ---- data: cache, FERPlus pairing, skipped-input counts, manifest containment ----

RAF_TRAIN = [1, 2, 3, 4, 5, 6, 7] * 3   # lines 1..21 of the label file
RAF_TEST = [1, 2, 3, 4, 5, 6, 7]        # lines 22..28


def cfg_for(name, root, *extra):
    return load_config(None, [f"data.name={name}", f"data.root={root}", "data.num_classes=7", "data.image_size=32",
                              "log.progress=false", "data.val_fraction=0.34", *extra])


def raf(tmp_path):
    return formats.rafdb(tmp_path / "raf", RAF_TRAIN, RAF_TEST, distribution=False)


def image(root, stem):
    return root / "Image" / "aligned" / f"{stem}_aligned.jpg"


def solid(path, value, fmt="JPEG"):
    Image.fromarray(np.full((100, 100, 3), value, dtype=np.uint8)).save(path, fmt)


def test_changed_image_rebuilds_the_cache(tmp_path):
    root = raf(tmp_path)
    before = build_splits(cfg_for("rafdb", root), ("test",))["test"]
    solid(image(root, "test_0001"), 200)
    after = build_splits(cfg_for("rafdb", root), ("test",))["test"]
    assert np.abs(after.images[0].astype(int) - 200).max() <= 2
    assert not np.array_equal(before.images[0], after.images[0])


def test_image_added_to_split_rebuilds_the_cache(tmp_path):
    root = raf(tmp_path)
    missing = image(root, "test_0002")
    kept = missing.read_bytes()
    missing.unlink()
    assert len(build_splits(cfg_for("rafdb", root, "data.on_error=skip"), ("test",))["test"]) == 6
    missing.write_bytes(kept)
    assert len(build_splits(cfg_for("rafdb", root, "data.on_error=skip"), ("test",))["test"]) == 7


def test_removed_image_is_an_error_not_the_stale_cache(tmp_path):
    root = raf(tmp_path)
    assert len(build_splits(cfg_for("rafdb", root), ("test",))["test"]) == 7
    image(root, "test_0001").unlink()
    with pytest.raises(DataError, match=r"list_patition_label.txt:22: missing image: .*test_0001_aligned.jpg"):
        build_splits(cfg_for("rafdb", root), ("test",))
    assert len(build_splits(cfg_for("rafdb", root, "data.on_error=skip"), ("test",))["test"]) == 6


def test_changed_annotation_rebuilds_the_cache(tmp_path):
    root = formats.affectnet_npy(tmp_path / "an", list(range(8)), list(range(8)))
    cfg = cfg_for("affectnet", root, "data.num_classes=8")
    assert np.allclose(build_splits(cfg, ("test",))["test"].va[0], [0.25, -0.5])
    np.save(root / "val_set" / "annotations" / "0_val.npy", np.array("0.75"))
    assert np.allclose(build_splits(cfg, ("test",))["test"].va[0], [0.75, -0.5])


def test_content_check_notices_an_edit_that_keeps_size_and_mtime(tmp_path):
    root = raf(tmp_path)
    path = image(root, "test_0001")
    solid(path, 10, "BMP")   # BMP: the same size whatever the pixels
    st = path.stat()
    cfg = cfg_for("rafdb", root)
    cfg.data.cache_verify = "content"
    assert build_splits(cfg, ("test",))["test"].images[0].max() == 10
    solid(path, 240, "BMP")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert build_splits(cfg, ("test",))["test"].images[0].min() == 240


def ferplus_rows(n_per_usage=8):
    rows = []
    for c in range(n_per_usage):
        for usage in ("Training", "PublicTest", "PrivateTest"):
            votes = [0] * 10
            votes[c % 8] = 10
            rows.append((usage, f"fer{len(rows):07d}.png", votes))
    return rows


# (in raise mode a row dropped mid-file already stops at the first Usage that no longer pairs)
@pytest.mark.parametrize("dropped, on_error", [("last", "raise"), ("last", "skip"), ("middle", "skip")])
def test_ferplus_votes_file_one_row_short_is_an_error(tmp_path, dropped, on_error):
    root = formats.ferplus(tmp_path / "ferplus", ferplus_rows())
    votes = root / "fer2013new.csv"
    lines = votes.read_text().splitlines()
    del lines[-1 if dropped == "last" else 10]
    votes.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fer2013new.csv ends at line 24 but .*fer2013.csv goes on \(line 25\)"):
        build_splits(cfg_for("ferplus", root, "data.num_classes=8", f"data.on_error={on_error}"))


def test_skipped_inputs_are_counted_once_with_file_and_line(tmp_path):
    root = raf(tmp_path)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().split("\n")
    lines[2] = "train_00003.jpg 9"          # unknown label (train)
    lines[23] = "test_0003.jpg"             # malformed line (test)
    lines[4] = "val_00005.jpg 1"            # neither train nor test
    label_file.write_text("\n".join(lines))
    image(root, "train_00007").unlink()     # missing image (train)
    splits = build_splits(cfg_for("rafdb", root, "data.on_error=skip"))
    reports = [d.info["skipped"] for d in splits.values() if d.info.get("skipped")]
    assert sum(r["total"] for r in reports) == 4
    examples = sorted(e for r in reports for e in r["examples"])
    assert [re.search(r"list_patition_label.txt:(\d+): ", e)[1] for e in examples] == ["24", "3", "5", "7"]
    assert all(e.count("missing image") <= 1 for e in examples)


def test_ferplus_bad_row_is_counted_once(tmp_path):
    rows = ferplus_rows()
    rows[4] = ("PublicTest", "fer0000004.png", [10] * 9)   # a val row one field short
    root = formats.ferplus(tmp_path / "ferplus", rows)
    splits = build_splits(cfg_for("ferplus", root, "data.num_classes=8", "data.on_error=skip"))
    reports = {split: d.info["skipped"] for split, d in splits.items() if d.info.get("skipped")}
    assert list(reports) == ["val"] and reports["val"]["total"] == 1
    assert "fer2013new.csv:6: malformed line: 11 fields" in reports["val"]["examples"][0]


def manifest_with(tmp_path, path_of_first):
    folder = tmp_path / "data"
    lines = ["path,label,split"]
    for i in range(7):
        formats.jpeg(folder / "img" / f"{i}.jpg", size=40)
        lines.append(f"{path_of_first if i == 0 else f'img/{i}.jpg'},{i},train")
    manifest = folder / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_manifest_path_outside_its_folder_is_refused(tmp_path, kind):
    outside = tmp_path / "secret.jpg"
    formats.jpeg(outside, size=40)
    if kind == "symlink":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "link.jpg").symlink_to(outside)
    raw = {"dotdot": "../secret.jpg", "absolute": str(outside), "symlink": "link.jpg"}[kind]
    manifest = manifest_with(tmp_path, raw)
    cfg = load_config(None, ["data.name=manifest", f"data.root={manifest}", "data.num_classes=7",
                             "data.image_size=32", "log.progress=false", "data.val_fraction=0"])
    for on_error in ("raise", "skip"):
        cfg.data.on_error = on_error
        with pytest.raises(DataError, match=rf"m.csv:2: image path '{re.escape(raw)}' leads outside"):
            build_splits(cfg, ("train",))
    cfg.data.manifest.allow_outside_root = True
    assert len(build_splits(cfg, ("train",))["train"]) == 7
