"""Writers of tiny datasets in the real on-disk formats (DATASETS.md), for the loader tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def jpeg(path: Path, size: int = 100, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, fmt)


def rafdb(root: Path, train_labels: list[int], test_labels: list[int], distribution: bool = True) -> Path:
    names = [f"train_{i + 1:05d}.jpg" for i in range(len(train_labels))] + \
            [f"test_{i + 1:04d}.jpg" for i in range(len(test_labels))]
    labels = train_labels + test_labels
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    # As the real file: one space, no header, no newline after the last line.
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(f"{n} {l}" for n, l in zip(names, labels)))
    for n in names:
        jpeg(root / "Image" / "aligned" / f"{n[:-4]}_aligned.jpg")
    if distribution:
        lines = []
        for n, l in zip(names, labels):
            d = np.zeros(7)
            d[l - 1] = 0.727273
            d[(l % 7)] += 0.272727
            lines.append(f"{n} " + " ".join(f"{v:.6f}" for v in d) + " \n")  # trailing space, as S6
        (root / "EmoLabel" / "distribution_basic.txt").write_text("".join(lines))
    return root


def rafdb_manual(root: Path, attributes: dict[str, tuple[int, int, int]]) -> Path:
    """RAF-DB's Annotation/manual/<stem>_manu_attri.txt: 5 landmark lines (x, y; tab-separated
    as public loaders read them), then the gender, race and age codes, one per line."""
    folder = root / "Annotation" / "manual"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, codes in attributes.items():
        marks = [f"{100 + 10 * k:.2f}\t{120 + 5 * k:.2f}" for k in range(5)]
        (folder / f"{stem}_manu_attri.txt").write_text("\n".join(marks + [str(c) for c in codes]) + "\n")
    return folder


def manifest(folder: Path, columns: list[str], rows: list[list[str]]) -> Path:
    """A manifest CSV `path,<columns>` with one 40 px image img/<i>.jpg per row."""
    lines = [",".join(["path", *columns])]
    for i, row in enumerate(rows):
        jpeg(folder / "img" / f"{i}.jpg", size=40)
        lines.append(",".join([f"img/{i}.jpg", *row]))
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def affectnet_csv(root: Path, train: list[tuple[int, float, float]], test: list[tuple[int, float, float]]) -> Path:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    for fname, rows in (("training.csv", train), ("validation.csv", test)):
        lines = [AFFECTNET_HEADER]
        for i, (code, v, a) in enumerate(rows):
            rel = f"{100 + i % 3}/{fname[:5]}{i:04d}.jpg"
            jpeg(root / "Manually_Annotated_Images" / rel, size=120)
            marks = ";".join(f"{10 + k % 50}.5" for k in range(136))
            lines.append(f"{rel},10,12,80,90,{marks},{code},{v},{a}")
        (lists / fname).write_text("\n".join(lines) + "\n")
    return root


def affectnet_npy(root: Path, train: list[int], test: list[int]) -> Path:
    for folder, codes in (("train_set", train), ("val_set", test)):
        for i, code in enumerate(codes):
            jpeg(root / folder / "images" / f"{i}.jpg", size=64)
            ann = root / folder / "annotations"
            ann.mkdir(parents=True, exist_ok=True)
            np.save(ann / f"{i}_exp.npy", np.array(str(code)))   # the release stores strings
            np.save(ann / f"{i}_val.npy", np.array("0.25"))
            np.save(ann / f"{i}_aro.npy", np.array("-0.5"))
            np.save(ann / f"{i}_lnd.npy", np.arange(136, dtype=np.float64))
    return root


def affectnet_plus(root: Path, train: list[int], test: list[int], meta=None) -> Path:
    """`meta(folder, i)`: meta-data keys to set (a None value removes the key) on record i."""
    for folder, codes in (("train_set", train), ("validation_set", test)):
        for i, code in enumerate(codes):
            base = root / "human_annotated" / folder
            jpeg(base / "images" / f"{i}.jpg", size=224)
            soft = np.full(8, 0.02)
            soft[code % 8] = 0.86
            record = {"human-label": code, "soft-label": soft.tolist(), "subset": i % 3,
                      "meta-data": {"age": 30, "valence": 0.5, "arousal": -2,
                                    "landmark-68": list(range(136)), "gender": {"female": 0.4, "male": 0.6}}}
            changed = {**record["meta-data"], **(meta(folder, i) if meta else {})}
            record["meta-data"] = {k: v for k, v in changed.items() if v is not None}
            (base / "annotations").mkdir(parents=True, exist_ok=True)
            (base / "annotations" / f"{i}.json").write_text(json.dumps(record))
    return root


def sfew(root: Path, per_class: int = 2) -> Path:
    for split, folder in (("Train", "Train_Aligned_Faces"), ("Val", "Val_Aligned_Faces")):
        for cls in ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            for i in range(per_class):
                jpeg(root / split / folder / cls / f"Movie_{i:09d}_{cls}.png", size=64, fmt="PNG")
    return root


FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def ferplus(root: Path, rows: list[tuple[str, str, list[int]]]) -> Path:
    """rows: (Usage, image name or '', 10 vote counts)."""
    root.mkdir(parents=True, exist_ok=True)
    pix = ["emotion,pixels,Usage"]
    new = [FERPLUS_HEADER]
    for usage, name, votes in rows:
        pix.append(f"0,{' '.join(str(v) for v in RNG.integers(0, 255, 2304))},{usage}")
        new.append(f"{usage},{name}," + ",".join(str(v) for v in votes))
    (root / "fer2013.csv").write_text("\n".join(pix) + "\n")
    (root / "fer2013new.csv").write_text("\n".join(new) + "\n")
    return root
