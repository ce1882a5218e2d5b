"""A seeded synthetic FER world whose true label distributions are known.

Generative story (per sample):
1. a class c ~ prior (FER-like imbalance) and a valence-arousal point a ~ N(mu_c, diag(sd_c^2))
   truncated to [-1, 1]^2;
2. the ground-truth distribution is the exact Bayes posterior q = p(c | a) of that mixture
   (truncation constants included), ambiguous near class borders;
3. the observed label y ~ Categorical(q): human-like annotation ambiguity;
4. facial action-unit intensities are the q-weighted mix of per-class prototypes plus noise;
   they move 68 landmark points (iBUG layout), which are posed (roll, yaw squeeze, scale,
   shift) and rendered with anti-aliased strokes and fills under illumination, tint and
   sensor noise.  The class is visible only through facial structure.

The task ceiling against the drawn labels is E[max_c q_c] (Bayes accuracy) and the lowest
expected cross-entropy to them is E[H(q)]; both are reported with the data.

Demographic groups (asked for by proportions, e.g. skin_tone [0.5, 0.5]) are visible and nothing
else: each sample's group is drawn independently of its class and VA point, and sets a band of skin
brightness (skin_tone) or of jaw width (face_shape).  The true distribution never depends on the
group; only what the labels and sample sizes make of it does (group-dependent noise, group mixes).
The facial strokes are inked relative to the skin, so darker skin shows them at lower contrast, as
in under-exposed photographs: a rendering gap that a control setting (equal noise, equal mix) shows.
The groups come from their own seed stream, so a world without groups renders byte for byte as
before, and one with groups differs from it only in the grouped attribute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.special import ndtr

from ldl.data.dataset import FERData
from ldl.data.groups import counts_for

# Canonical order: Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt.
VA_MEAN = np.array([
    [0.00, 0.00], [0.65, 0.35], [-0.60, -0.45], [0.25, 0.75],
    [-0.45, 0.75], [-0.70, 0.15], [-0.55, 0.48], [-0.30, 0.02],
])
VA_STD = np.array([
    [0.18, 0.18], [0.20, 0.22], [0.20, 0.20], [0.22, 0.15],
    [0.18, 0.15], [0.15, 0.20], [0.18, 0.18], [0.15, 0.15],
])
CLASS_PRIOR = np.array([0.20, 0.33, 0.13, 0.11, 0.05, 0.06, 0.09, 0.03])

AUS = ("inner_brow_raise", "outer_brow_raise", "brow_lower", "upper_lid_raise", "lid_tighten",
       "nose_wrinkle", "lip_corner_pull", "lip_corner_depress", "unilateral_lip_raise",
       "jaw_drop", "lip_stretch")
AU_PROTOTYPES = np.array([
    # ibr  obr  blw  ulr  ltg  nwr  lcp  lcd  ulr1 jaw  lst
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # Neutral
    [0.0, 0.0, 0.0, 0.0, 0.4, 0.0, 1.0, 0.0, 0.0, 0.3, 0.0],  # Happy
    [0.9, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # Sad
    [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # Surprise
    [1.0, 0.6, 0.6, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0],  # Fear
    [0.0, 0.0, 0.6, 0.0, 0.5, 1.0, 0.0, 0.4, 0.0, 0.0, 0.0],  # Disgust
    [0.0, 0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0],  # Anger
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],  # Contempt
])
AU_NOISE = 0.08
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
GROUP_STREAM = 7   # the groups' seed streams beside the split's own: drawing them moves no other value
# attribute -> (group names by number of groups, band centres from the first to the last group,
# half-width of each band): skin brightness of the face fill, jaw width of the face outline.
GROUP_ATTRIBUTES = {
    "skin_tone": ({2: ("light", "dark"), 3: ("light", "medium", "dark")}, (0.78, 0.38), 0.06),
    "face_shape": ({2: ("narrow", "wide"), 3: ("narrow", "medium", "wide")}, (0.88, 1.08), 0.03),
}


@dataclass(frozen=True)
class SyntheticSpec:
    num_classes: int = 8
    image_size: int = 48
    seed: int = 0


def _mixture(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prior = CLASS_PRIOR[:num_classes] / CLASS_PRIOR[:num_classes].sum()
    return prior, VA_MEAN[:num_classes], VA_STD[:num_classes]


def posterior(va: np.ndarray, num_classes: int = 8) -> np.ndarray:
    """Exact p(c | a) of the truncated-Gaussian mixture, shape [N, num_classes]."""
    prior, mean, std = _mixture(num_classes)
    z = (va[:, None, :] - mean[None]) / std[None]
    # Mass of each class Gaussian inside the [-1, 1]^2 box (diagonal covariance).
    box_mass = np.prod(ndtr((1 - mean) / std) - ndtr((-1 - mean) / std), axis=1)
    log_lik = -0.5 * (z ** 2).sum(-1) - np.log(std).sum(-1) - np.log(box_mass)
    log_post = np.log(prior) + log_lik
    log_post -= log_post.max(1, keepdims=True)
    post = np.exp(log_post)
    return post / post.sum(1, keepdims=True)


def _sample_va(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    prior, mean, std = _mixture(num_classes)
    out = np.empty((0, 2))
    while len(out) < n:
        cls = rng.choice(num_classes, size=2 * (n - len(out)) + 16, p=prior)
        va = mean[cls] + std[cls] * rng.standard_normal((len(cls), 2))
        out = np.concatenate([out, va[np.all(np.abs(va) <= 1, axis=1)]])
    return out[:n]


# ---------------------------------------------------------------- landmarks (face coordinates)
def _lip_curve(t: np.ndarray, half_width, base, corner_lift, right_lift, bow) -> tuple:
    x = t * half_width[:, None]
    y = base[:, None] - corner_lift[:, None] * t ** 2 - right_lift[:, None] * np.clip(t, 0, None) ** 2
    y = y - bow[:, None] * np.cos(t * math.pi / 2) ** 2
    return x, y


def landmarks_from_aus(au: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """68 iBUG-layout points in face coordinates (x right, y down, face within ~[-1, 1])."""
    n = len(au)
    (ibr, obr, blw, ulr, ltg, nwr, lcp, lcd, uni, jaw, lst) = au.T
    face_w, eye_gap, brow_h, mouth_w = identity.T
    pts = np.zeros((n, 68, 2))
    # Jaw 0..16: half ellipse from the left temple round the chin; the chin drops with the jaw.
    theta = math.pi - np.arange(17) * math.pi / 16
    pts[:, :17, 0] = 0.85 * face_w[:, None] * np.cos(theta)
    pts[:, :17, 1] = -0.05 + (0.95 + 0.15 * jaw)[:, None] * np.sin(theta)
    # Brows 17..21 (left, outer->inner) and 22..26 (right, inner->outer).
    t = np.linspace(0, 1, 5)  # 0 = outer end, 1 = inner end
    for side, idx in ((-1, slice(17, 22)), (1, slice(22, 27))):
        tt = t if side < 0 else t[::-1]
        x = side * (0.72 - 0.55 * tt) * eye_gap[:, None]
        lift = 0.13 * (ibr[:, None] * tt + obr[:, None] * (1 - tt))
        lower = 0.10 * blw[:, None] * (0.5 + 0.5 * tt)
        y = brow_h[:, None] - 0.08 * np.sin(math.pi * (0.15 + 0.7 * tt)) - lift + lower
        x = x - side * 0.05 * blw[:, None] * tt
        pts[:, idx, 0], pts[:, idx, 1] = x, y
    # Nose bridge 27..30 and nostrils 31..35.
    pts[:, 27:31, 1] = np.linspace(-0.30, 0.12, 4)
    nostril_y = 0.24 - 0.06 * nwr
    pts[:, 31:36, 0] = np.linspace(-1, 1, 5) * (0.15 + 0.04 * nwr)[:, None]
    pts[:, 31:36, 1] = nostril_y[:, None] + 0.03 * (1 - np.abs(np.linspace(-1, 1, 5)))
    # Eyes 36..41 (left) and 42..47 (right): corners, upper lid, lower lid.
    opening = np.clip(0.06 * (1 + 0.9 * ulr - 0.6 * ltg - 0.3 * nwr), 0.008, None)
    angles = np.array([math.pi, 2 * math.pi / 3, math.pi / 3, 0.0, -math.pi / 3, -2 * math.pi / 3])
    for side, start in ((-1, 36), (1, 42)):
        order = angles if side < 0 else angles[[3, 2, 1, 0, 5, 4]]
        cx = side * 0.38 * eye_gap
        pts[:, start:start + 6, 0] = cx[:, None] + 0.14 * np.cos(order)[None]
        pts[:, start:start + 6, 1] = -0.22 - opening[:, None] * np.sin(order)[None]
    # Mouth: outer 48..59, inner 60..67.
    half_w = 0.30 * mouth_w * (1 + 0.3 * lcp + 0.35 * lst - 0.1 * lcd)
    lift = 0.12 * lcp - 0.12 * lcd
    right = 0.14 * uni
    gap = 0.02 + 0.25 * jaw + 0.05 * lst
    centre = np.full(n, 0.50)
    upper = centre - 0.05 * nwr
    t_outer_up = np.linspace(-1, 1, 7)        # 48..54
    t_outer_lo = np.linspace(1, -1, 7)[1:-1]  # 55..59
    t_inner_up = np.linspace(-1, 1, 5)        # 60..64
    t_inner_lo = np.linspace(1, -1, 5)[1:-1]  # 65..67
    zeros = np.zeros(n)
    pts[:, 48:55, 0], pts[:, 48:55, 1] = _lip_curve(t_outer_up, half_w, upper - 0.06, lift, right, 0.02 + zeros)
    pts[:, 55:60, 0], pts[:, 55:60, 1] = _lip_curve(t_outer_lo, half_w, centre + gap + 0.07, lift, right, -0.03 + zeros)
    pts[:, 60:65, 0], pts[:, 60:65, 1] = _lip_curve(t_inner_up, 0.85 * half_w, upper - 0.005, lift, right, zeros)
    pts[:, 65:68, 0], pts[:, 65:68, 1] = _lip_curve(t_inner_lo, 0.85 * half_w, centre + gap, lift, right, -0.01 + zeros)
    # Lip corners of the inner ring coincide with the outer corners (as in iBUG annotations).
    return pts


def _pose(pts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = len(pts)
    roll = rng.uniform(-0.22, 0.22, n)
    yaw = rng.uniform(-0.35, 0.35, n)
    scale = rng.uniform(0.70, 0.90, n)
    shift = rng.uniform(-0.07, 0.07, (n, 2))
    x = pts[..., 0] * (1 - 0.25 * np.abs(yaw))[:, None] + 0.12 * yaw[:, None] * (1 - pts[..., 0] ** 2)
    y = pts[..., 1]
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    out = np.stack([c * x - s * y, s * x + c * y], -1) * scale[:, None, None] + shift[:, None, :]
    params = np.stack([roll, yaw, scale, shift[:, 0], shift[:, 1]], 1)
    return out, params


# ---------------------------------------------------------------- rendering
_POLYLINES = (  # (first, last, closed, stroke half-width, ink strength)
    (0, 16, False, 0.010, 0.35), (17, 21, False, 0.030, 1.0), (22, 26, False, 0.030, 1.0),
    (27, 30, False, 0.012, 0.6), (31, 35, False, 0.014, 0.7), (36, 41, True, 0.012, 0.9),
    (42, 47, True, 0.012, 0.9), (48, 59, True, 0.016, 0.8), (60, 67, True, 0.010, 0.8),
)


def _segments() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    starts, ends, widths, inks = [], [], [], []
    for first, last, closed, width, ink in _POLYLINES:
        idx = list(range(first, last + 1))
        pairs = list(zip(idx[:-1], idx[1:])) + ([(last, first)] if closed else [])
        for a, b in pairs:
            starts.append(a), ends.append(b), widths.append(width), inks.append(ink)
    return np.array(starts), np.array(ends), np.array(widths), np.array(inks)


_SEG_START, _SEG_END, _SEG_WIDTH, _SEG_INK = _segments()


def _coverage(signed_dist: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance (negative inside), in pixels of `pixel`."""
    return (0.5 - signed_dist / pixel).clamp(0, 1)


def _ellipse_sdf(px, py, cx, cy, ax, ay, angle) -> torch.Tensor:
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    dx, dy = px[None] - cx[:, None], py[None] - cy[:, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = torch.sqrt((u / ax[:, None]) ** 2 + (v / ay[:, None]) ** 2)
    return (r - 1) * torch.minimum(ax, ay)[:, None]


def _strokes(lm: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased ink coverage [N, size*size] of the landmark polylines.

    Points are sampled densely (half-pixel spacing) along every segment and splatted onto
    the pixels within reach of the stroke, keeping the maximum coverage per pixel: cost grows
    with stroke length, not with image area times segment count.
    """
    n = len(lm)
    pixel = 2.0 / size
    steps = max(4, math.ceil(0.2 / (0.5 * pixel)))
    t = torch.linspace(0, 1, steps)
    a, b = lm[:, _SEG_START], lm[:, _SEG_END]                                   # [N, S, 2]
    pts = (a[:, :, None] + t[None, None, :, None] * (b - a)[:, :, None]).reshape(n, -1, 2)
    width = (torch.from_numpy(_SEG_WIDTH).float().repeat_interleave(steps)[None] * scale[:, None])
    ink = torch.from_numpy(_SEG_INK).float().repeat_interleave(steps)
    reach = math.ceil((float(width.max()) + pixel) / pixel)
    offsets = torch.arange(-reach, reach + 1)
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
    centre = torch.floor((pts + 1) / pixel).long()                             # [N, M, 2] (x, y)
    col = centre[..., 0, None] + ox.reshape(-1)                                 # [N, M, O]
    row = centre[..., 1, None] + oy.reshape(-1)
    dx = (col.float() + 0.5) * pixel - 1 - pts[..., 0, None]
    dy = (row.float() + 0.5) * pixel - 1 - pts[..., 1, None]
    cover = _coverage(torch.sqrt(dx * dx + dy * dy) - width[..., None], pixel) * ink[None, :, None]
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    flat = torch.where(inside, row * size + col, 0) + (torch.arange(n) * size * size)[:, None, None]
    out = torch.zeros(n * size * size)
    out.scatter_reduce_(0, flat.reshape(-1), torch.where(inside, cover, 0).reshape(-1), "amax")
    return out.view(n, size * size)


def render(pts: np.ndarray, pose: np.ndarray, eye_open: np.ndarray, mouth_gap: np.ndarray,
           look: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterise posed landmarks into uint8 RGB images [N, size, size, 3]."""
    n = len(pts)
    pixel = 2.0 / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    lm = torch.from_numpy(pts).float()
    roll, _, scale, sx, sy = (torch.from_numpy(p).float() for p in pose.T)
    bg_level, bg_grad, bg_dir, skin, light, light_dir, noise_sd, r_tint, b_tint = (
        torch.from_numpy(v).float() for v in look.T)

    img = bg_level[:, None] + bg_grad[:, None] * (px[None] * torch.cos(bg_dir)[:, None] + py[None] * torch.sin(bg_dir)[:, None])
    # Face: an ellipse through the jaw, posed with the landmarks.
    face_cx, face_cy = lm[:, 8, 0] * 0 + (lm[:, 0, 0] + lm[:, 16, 0]) / 2, (lm[:, 0, 1] + lm[:, 16, 1]) / 2
    half_w = torch.linalg.norm(lm[:, 16] - lm[:, 0], dim=1) / 2 * 1.02
    half_h = torch.linalg.norm(lm[:, 8] - torch.stack([face_cx, face_cy], 1), dim=1) * 1.05
    face = _coverage(_ellipse_sdf(px, py, face_cx, face_cy - 0.1 * half_h, half_w, half_h * 1.1, roll), pixel)
    img = img + (skin[:, None] - img) * face
    # Eyes: sclera ellipse and an iris disc clipped to it.
    for first in (36, 42):
        corner_a, corner_b = lm[:, first], lm[:, first + 3]
        centre = (corner_a + corner_b) / 2
        ax = torch.linalg.norm(corner_b - corner_a, dim=1) / 2
        ay = torch.from_numpy(eye_open).float() * scale
        eye = _coverage(_ellipse_sdf(px, py, centre[:, 0], centre[:, 1], ax, ay, roll), pixel)
        iris_r = 0.45 * ax
        iris = _coverage(_ellipse_sdf(px, py, centre[:, 0], centre[:, 1], iris_r, iris_r, roll), pixel)
        img = img + ((skin + 0.25).clamp(max=1)[:, None] - img) * eye
        img = img + (0.08 - img) * eye * iris
    # Open mouth: a dark ellipse between the inner lips.
    mouth_centre = (lm[:, 60] + lm[:, 64]) / 2 + torch.stack([-torch.sin(roll), torch.cos(roll)], 1) * torch.from_numpy(mouth_gap).float()[:, None] * scale[:, None] / 2
    mouth_ax = torch.linalg.norm(lm[:, 64] - lm[:, 60], dim=1) / 2 * 0.9
    mouth_ay = (torch.from_numpy(mouth_gap).float() * scale / 2).clamp(min=1e-3)
    mouth = _coverage(_ellipse_sdf(px, py, mouth_centre[:, 0], mouth_centre[:, 1], mouth_ax, mouth_ay, roll), pixel)
    img = img + (0.05 - img) * mouth * face
    img = img + (0.6 * skin[:, None] * 0.25 - img) * _strokes(lm, scale, size)
    # Illumination, tint, sensor noise.
    img = img * (1 + light[:, None] * (px[None] * torch.cos(light_dir)[:, None] + py[None] * torch.sin(light_dir)[:, None]))
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    img = img[..., None] * torch.stack([r_tint, torch.ones_like(r_tint), b_tint], 1)[:, None, :]
    img = img + noise_sd[:, None, None] * torch.randn(img.shape, generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).reshape(n, size, size, 3).numpy()


def _look(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([
        rng.uniform(0.15, 0.9, n), rng.uniform(-0.2, 0.2, n), rng.uniform(0, 2 * math.pi, n),
        rng.uniform(0.45, 0.85, n), rng.uniform(0.0, 0.35, n), rng.uniform(0, 2 * math.pi, n),
        rng.uniform(0.01, 0.05, n), rng.uniform(0.95, 1.15, n), rng.uniform(0.75, 0.95, n),
    ], 1)


def _draw_groups(groups: Mapping[str, Sequence[float]], n: int, stream: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """attribute -> (group index [N], the attribute's rendered value [N]): exactly the asked
    proportions of n (largest remainders get the rest), in a random order seeded by `stream` and
    the attribute (asking for another attribute too changes none of this one's draws)."""
    out = {}
    for attribute in groups:
        if attribute not in GROUP_ATTRIBUTES:
            raise ValueError(f"data.synthetic.groups.{attribute}: unknown attribute (known: {', '.join(GROUP_ATTRIBUTES)})")
        names, (first, last), half_width = GROUP_ATTRIBUTES[attribute]
        proportions = [float(p) for p in groups[attribute]]
        if len(proportions) not in names or min(proportions) < 0 or not math.isclose(sum(proportions), 1, abs_tol=1e-6):
            raise ValueError(f"data.synthetic.groups.{attribute}={proportions}: give 2 or 3 proportions >= 0 summing "
                             f"to 1, one per group ({' / '.join(names[2])} or {' / '.join(names[3])})")
        rng = np.random.default_rng([*stream, list(GROUP_ATTRIBUTES).index(attribute)])
        index = rng.permutation(np.repeat(np.arange(len(proportions)), counts_for(proportions, n)))
        centres = np.linspace(first, last, len(proportions))
        out[attribute] = (index, centres[index] + rng.uniform(-half_width, half_width, n))
    return out


def generate_split(spec: SyntheticSpec, split: str, n: int, chunk: int = 256, progress=None,
                   groups: Mapping[str, Sequence[float]] | None = None) -> FERData:
    """Generate one split; each split has its own seed stream so sizes do not couple them.
    `groups`: attribute -> proportions of its groups (e.g. {"skin_tone": [0.5, 0.5]})."""
    rng = np.random.default_rng([spec.seed, SPLIT_IDS[split]])
    va = _sample_va(rng, n, spec.num_classes)
    dist = posterior(va, spec.num_classes)
    labels = (rng.random(n)[:, None] > np.cumsum(dist, 1)).sum(1).clip(max=spec.num_classes - 1)
    protos = AU_PROTOTYPES[:spec.num_classes]
    au = np.clip(dist @ protos + AU_NOISE * rng.standard_normal((n, len(AUS))), 0, 1.2)
    identity = np.stack([rng.uniform(0.9, 1.05, n), rng.uniform(0.9, 1.1, n),
                         rng.uniform(-0.52, -0.42, n), rng.uniform(0.85, 1.15, n)], 1)
    drawn = _draw_groups(groups or {}, n, [spec.seed, SPLIT_IDS[split], GROUP_STREAM])
    if "face_shape" in drawn:
        identity[:, 0] = drawn["face_shape"][1]
    pts_face = landmarks_from_aus(au, identity)
    pts, pose = _pose(pts_face, rng)
    eye_open = np.clip(0.06 * (1 + 0.9 * au[:, 3] - 0.6 * au[:, 4] - 0.3 * au[:, 5]), 0.008, None)
    mouth_gap = 0.02 + 0.25 * au[:, 9] + 0.05 * au[:, 10] - 0.012
    look = _look(rng, n)
    if "skin_tone" in drawn:
        look[:, 3] = drawn["skin_tone"][1]
    images = np.empty((n, spec.image_size, spec.image_size, 3), np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        images[sl] = render(pts[sl], pose[sl], eye_open[sl], mouth_gap[sl], look[sl], spec.image_size, rng)
        if progress is not None:
            progress.update(sl.stop - sl.start)
    landmarks_px = ((pts + 1) / 2 * spec.image_size).astype(np.float32)
    return FERData(
        images=images, labels=labels.astype(np.int64), num_classes=spec.num_classes,
        names=np.array([f"{split}_{i:06d}" for i in range(n)]), va=va.astype(np.float32),
        landmarks=landmarks_px, dist=dist.astype(np.float32), aus=au.astype(np.float32),
        groups={a: np.array(GROUP_ATTRIBUTES[a][0][len(groups[a])])[index] for a, (index, _) in drawn.items()},
    )


def task_ceiling(dist: np.ndarray) -> dict[str, float]:
    """Bayes accuracy E[max q] against labels drawn from q, and the cross-entropy floor E[H(q)]."""
    entropy = -(dist * np.log(np.clip(dist, 1e-12, None))).sum(1)
    return {"bayes_accuracy": float(dist.max(1).mean()), "nll_floor": float(entropy.mean())}
