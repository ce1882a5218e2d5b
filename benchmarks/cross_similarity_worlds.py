"""The RAF-DB-format worlds of issue 21's cross study (experiments/cross/similarity.yaml), each
differing from the synthetic world in one known way, written as label file + aligned JPEGs +
distribution_basic.txt (the world's true label distributions) so that the loader, the cache
and the 7-class protocol run on real files:

  raf-prior  world seed 7, the class prior reversed (the rarest expression becomes the most
             frequent): rejection sampling by label at rates pi'_c / pi_c keeps each class's
             faces and makes the true distribution p'(c | a) proportional to p(c | a) pi'_c / pi_c
  raf-pose   world seed 8, every face rolled by a further 20-35 degrees either way (the
             synthetic world rolls by at most 12.6): the image is reflect-padded, rotated and
             cropped back, so no blank corners appear
  raf-noise  world seed 9 as it is; the plan injects 30 % symmetric noise into its training
             labels (data.noise), so the realised rate is known

All at the study's 32 px, JPEG quality 95 (the one difference every raf-* world shares with
the others: the format).  The training file holds 1,300 images: the plan holds 300 of them out
as validation (data.val_fraction), as the memorisation configs' 1,000 train + 300 val.

Usage: python benchmarks/cross_similarity_worlds.py [--out sweeps/cross_similarity] [--train 1300] [--test 1000]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ldl.data.rafdb import write_rafdb
from ldl.data.synthetic import CLASS_PRIOR, SPLIT_IDS, SyntheticSpec, generate_split

PRIOR = CLASS_PRIOR[:7] / CLASS_PRIOR[:7].sum()


def reversed_prior() -> np.ndarray:
    """The same shares, the most frequent class's given to the rarest and so on."""
    order = np.argsort(PRIOR)
    out = np.empty(7)
    out[order] = PRIOR[order[::-1]]
    return out


def prior_shifted(seed: int, split: str, n: int, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rate = prior / PRIOR
    rate /= rate.max()
    data = generate_split(SyntheticSpec(num_classes=7, image_size=32, seed=seed), split, int(1.3 * n / (PRIOR * rate).sum()))
    keep = np.random.default_rng([seed, 99]).random(len(data)) < rate[data.labels]
    index = np.flatnonzero(keep)[:n]
    if len(index) < n:
        raise RuntimeError(f"only {len(index)} of {n} samples accepted: draw more")
    dist = data.dist[index] * rate
    return data.images[index], data.labels[index], dist / dist.sum(1, keepdims=True)


def rolled(images: np.ndarray, rng: np.random.Generator, low: float = 20, high: float = 35) -> np.ndarray:
    angles = rng.uniform(low, high, len(images)) * rng.choice([-1, 1], len(images))
    side, pad = images.shape[1], images.shape[1] // 4
    out = np.empty_like(images)
    for i, (image, angle) in enumerate(zip(images, angles)):
        big = Image.fromarray(np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
        out[i] = np.asarray(big.rotate(angle, resample=Image.BILINEAR))[pad:pad + side, pad:pad + side]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="sweeps/cross_similarity")
    parser.add_argument("--train", type=int, default=1300)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    out = Path(args.out)
    sizes = {"train": args.train, "test": args.test}
    worlds = {"raf-prior": 7, "raf-pose": 8, "raf-noise": 9}
    for name, seed in worlds.items():
        root = out / name
        if (root / "EmoLabel" / "distribution_basic.txt").is_file():
            print(f"{root}: already written")
            continue
        splits, dists = {}, {}
        for split, n in sizes.items():
            if name == "raf-prior":
                images, labels, dist = prior_shifted(seed, split, n, reversed_prior())
            else:
                data = generate_split(SyntheticSpec(num_classes=7, image_size=32, seed=seed), split, n)
                images, labels, dist = data.images, data.labels, data.dist
                if name == "raf-pose":
                    images = rolled(images, np.random.default_rng([seed, 98, SPLIT_IDS[split]]))
            splits[split], dists[split] = (images, labels), dist
        write_rafdb(root, splits, quality=95, distributions=dists)
        prior = np.bincount(splits["train"][1], minlength=7) / sizes["train"]
        print(f"{root}: {sizes} images, training class shares {np.round(prior, 3).tolist()}")


if __name__ == "__main__":
    main()
