"""The winner's 118-point selection, normalisation, position/dx/dx2 features and augmentations.

The cache stores `select_points` of each sequence: raw x, y of the 118 points, frames where all of them
are NaN dropped. Everything after that (augmentations, normalisation, features) runs per sample in the
DataLoader, so each epoch sees fresh augmentations without touching the parquet files.
"""
from __future__ import annotations

import numpy as np
import torch

# Face-mesh indices (flat index = face index for the face, which comes first in every frame).
LIP = [0, 61, 185, 40, 39, 37, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375,
       78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
LEFT_HAND = list(range(468, 489))
RIGHT_HAND = list(range(522, 543))
NOSE = [1, 2, 98, 327]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
SELECTED_LANDMARKS = np.array(LIP + LEFT_HAND + RIGHT_HAND + NOSE + RIGHT_EYE + LEFT_EYE)
NUM_POINTS = len(SELECTED_LANDMARKS)  # 118
NUM_POSITION_CHANNELS = 2 * NUM_POINTS  # x, y: what features_on_device sends to the device
CENTRE_POINT = LIP.index(17)  # face landmark 17 (lower lip) centres every sequence

# Mirror pairs (face-mesh left <-> right); the eye lists above are already aligned pairwise.
_LEFT_LIP = [84, 181, 91, 146, 61, 185, 40, 39, 37, 87, 178, 88, 95, 78, 191, 80, 81, 82]
_RIGHT_LIP = [314, 405, 321, 375, 291, 409, 270, 269, 267, 317, 402, 318, 324, 308, 415, 310, 311, 312]
_MIRROR_PAIRS = list(zip(LEFT_HAND, RIGHT_HAND)) + list(zip(_LEFT_LIP, _RIGHT_LIP)) + \
    list(zip(LEFT_EYE, RIGHT_EYE)) + [(98, 327)]


def _mirror_permutation() -> np.ndarray:
    position = {lm: i for i, lm in enumerate(SELECTED_LANDMARKS.tolist())}
    perm = np.arange(NUM_POINTS)
    for a, b in _MIRROR_PAIRS:
        perm[position[a]], perm[position[b]] = position[b], position[a]
    return perm


MIRROR_PERMUTATION = _mirror_permutation()

# The winner's probabilities for each augmentation.
P_RESAMPLE, P_MIRROR, P_AFFINE, P_TIME_MASK, P_SPACE_MASK = 0.8, 0.5, 0.75, 0.5, 0.5


def select_points(xyz: np.ndarray) -> np.ndarray:
    """(frames, 543, 3) landmarks -> (frames', 118, 2) float32 x, y; frames with no selected point dropped."""
    pts = xyz[:, SELECTED_LANDMARKS, :2].astype(np.float32)
    present = ~np.isnan(pts).all(axis=(1, 2))
    return pts[present]


def normalise(points: np.ndarray) -> np.ndarray:
    """Centre on face landmark 17's NaN-mean (0.5 if never seen); scale by the NaN-std around it, per axis."""
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        centre = np.nanmean(points[:, CENTRE_POINT], axis=0)
        centre = np.where(np.isnan(centre), 0.5, centre)
        std = np.sqrt(np.nanmean(np.square(points - centre), axis=(0, 1)))
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return ((points - centre) / std).astype(np.float32)


def sequence_positions(points: np.ndarray) -> np.ndarray:
    """(T, 118, 2) raw points -> (T, 236) normalised positions, NaN kept: `motion_features` needs to know
    which points are missing, as `sequence_features` does (a difference with a missing point is 0)."""
    return normalise(points).reshape(len(points), -1)


def motion_features(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`sequence_features` of a padded batch, on whatever device the batch is: (B, L, 236) positions from
    `sequence_positions` (0 on padded frames) and the (B, L) mask -> (B, L, 708), bit for bit the host's.

    Padding sits at the end, so frame t has a next (next-but-one) real frame exactly where mask[t + 1]
    (mask[t + 2]) is True; elsewhere dx (dx2) is 0, as on the host. IEEE subtraction is exact-rounded on
    every device, so the differences are the host's to the bit.

    The frames ahead are read through `torch.roll`, whose index wraps, not through slices: compiled for the
    CPU, inductor fuses `positions[:, k:]` into a kernel that still loads the out-of-range frames it then
    masks off, past the end of `positions`. A batch from a DataLoader worker lives in shared memory mapped to
    its exact size, so that read segfaulted (tests/test_compile.py)."""
    length = positions.shape[1]
    frame = torch.arange(length, device=positions.device)

    def difference_ahead(k: int) -> torch.Tensor:
        has_frame_ahead = torch.roll(mask, -k, 1) & (frame < length - k)
        return torch.where(has_frame_ahead.unsqueeze(-1), torch.roll(positions, -k, 1) - positions, 0.0)

    return torch.cat([positions, difference_ahead(1), difference_ahead(2)], dim=-1).nan_to_num_(
        nan=0.0, posinf=0.0, neginf=0.0)


def sequence_features(points: np.ndarray) -> np.ndarray:
    """(T, 118, 2) raw points -> (T, 708) features: normalised positions, dx, dx2; NaN -> 0."""
    pos = normalise(points)
    t = len(pos)
    dx = np.zeros_like(pos)
    dx2 = np.zeros_like(pos)
    if t > 1:
        dx[:-1] = pos[1:] - pos[:-1]
    if t > 2:
        dx2[:-2] = pos[2:] - pos[:-2]
    feats = np.concatenate([pos.reshape(t, -1), dx.reshape(t, -1), dx2.reshape(t, -1)], axis=1)
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)


# ---- augmentations: each takes raw (T, 118, 2) points and a numpy Generator -----------------------

def temporal_resample(points: np.ndarray, rng: np.random.Generator, low=0.5, high=1.5) -> np.ndarray:
    t = len(points)
    new_t = max(1, int(round(t * rng.uniform(low, high))))
    if new_t == t or t == 1:
        return points
    src = np.linspace(0.0, t - 1, new_t)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, t - 1)
    w = (src - lo)[:, None, None].astype(np.float32)
    return points[lo] * (1 - w) + points[hi] * w


def mirror(points: np.ndarray) -> np.ndarray:
    """Flip x in image coordinates and swap left/right hands, eyes, lips and nose."""
    flipped = points[:, MIRROR_PERMUTATION].copy()
    flipped[..., 0] = 1.0 - flipped[..., 0]
    return flipped


def random_affine(points: np.ndarray, rng: np.random.Generator, scale=(0.8, 1.2), shear=(-0.15, 0.15),
                  shift=(-0.1, 0.1), degrees=(-30.0, 30.0)) -> np.ndarray:
    centre = np.float32(0.5)
    xy = points - centre
    matrix = np.eye(2) * rng.uniform(*scale)
    s = rng.uniform(*shear)
    matrix = matrix @ (np.array([[1.0, s], [0.0, 1.0]]) if rng.random() < 0.5 else np.array([[1.0, 0.0], [s, 1.0]]))
    angle = np.deg2rad(rng.uniform(*degrees))
    c, sn = np.cos(angle), np.sin(angle)
    matrix = matrix @ np.array([[c, -sn], [sn, c]])
    return (xy @ matrix.astype(np.float32) + rng.uniform(*shift) + centre).astype(np.float32)


def crop_frames(points: np.ndarray, max_len: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most max_len frames: a random window in training (rng given), else the first ones."""
    t = len(points)
    if t <= max_len:
        return points
    start = int(rng.integers(0, t - max_len + 1)) if rng is not None else 0
    return points[start:start + max_len]


def time_mask(points: np.ndarray, rng: np.random.Generator, size=(0.2, 0.4)) -> np.ndarray:
    t = len(points)
    span = int(t * rng.uniform(*size))
    if span == 0:
        return points
    start = int(rng.integers(0, t - span + 1))
    out = points.copy()
    out[start:start + span] = np.nan
    return out


def space_mask(points: np.ndarray, rng: np.random.Generator, size=(0.2, 0.4)) -> np.ndarray:
    with _quiet_nan_warnings():
        lo, hi = np.nanmin(points, axis=(0, 1)), np.nanmax(points, axis=(0, 1))
    if not np.all(np.isfinite(lo)):
        return points
    extent = (hi - lo) * rng.uniform(*size)
    corner = lo + (hi - lo - extent) * rng.random(2)
    inside = np.all((points >= corner) & (points <= corner + extent), axis=-1)
    out = points.copy()
    out[inside] = np.nan
    return out


class _quiet_nan_warnings:
    """nanmean/nanmin of an all-NaN slice is expected here (missing hands) and handled."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
