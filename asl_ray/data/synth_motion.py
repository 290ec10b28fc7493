"""The generative model of the synthetic set: signs, signers and the landmarks of one sequence.

Each sign is a smooth trajectory of the dominant hand relative to the face (a centre plus a few
Fourier harmonics), a hand shape (finger curls, spread, roll, yaw) that may change during the sign,
and a lip motion (opening and width). Signs come in families that share a trajectory, so some
classes differ only by hand shape or lips. Two-handed signs move the other hand too (mirrored,
alternating, or as a still base hand). All of this is relative to the face and hands, so it
survives the model's normalisation (centre on face landmark 17, divide by the overall std).

Signers differ by body position and scale in the image, face proportions, a personal offset and
amplitude of their signing, and handedness: a left-handed signer's sequences are mirrored and the
dominant hand is ``left_hand``. Per sequence: random length (see :func:`sample_lengths`), time
warp, amplitude and position jitter, noise, the hand entering and leaving the frame (undetected
below the image), random hand dropouts and rare face dropouts. The non-dominant hand of a
one-handed sign is NaN in every frame, as in the real data.

Writing these sequences as a data root in the real layout is `asl_ray.data.synth`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import numpy as np

from asl_ray.data.gislr import LANDMARKS_PER_FRAME, TYPE_OFFSETS

# Face-mesh indices the reference model reads (besides both hands).
LIP = [0, 61, 185, 40, 39, 37, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375,
       78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
LEYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
REYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
NOSE = [1, 2, 98, 327]

# Lip contours, each from the image-left corner to the image-right corner.
_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
_OUTER_LOWER = [146, 91, 181, 84, 17, 314, 405, 321, 375]
_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
_INNER_LOWER = [95, 88, 178, 87, 14, 317, 402, 318, 324]

# Sequence lengths: round(shift + exp(mu + sigma * N(0, 1))), least-squares fit to the real quantiles.
LENGTH_SHIFT = 2.46
LENGTH_LOG_MEAN = 2.953
LENGTH_LOG_SD = 1.064
MIN_FRAMES = 3
MAX_FRAMES = 537

LEFT_HANDED_FRACTION = 0.43  # real: left hand absent in ~56% of sequences, right hand in ~42%
TWO_HANDED_FRACTION = 0.05  # real: both hands seen in ~3% of sequences
SIGNS_PER_FAMILY = 2.5  # signs that share one base trajectory
HAND_SIZE = 0.19  # wrist to middle fingertip, image units at signer scale 1
IMAGE_BOTTOM = 1.0  # a hand whose wrist is below this is not detected


# ---------------------------------------------------------------- lengths


def sample_lengths(rng: np.random.Generator, n: int, max_frames: int = MAX_FRAMES, log_shift=0.0) -> np.ndarray:
    """Sequence lengths following the real distribution, clipped to [3, max_frames].

    10k draws (seed 0, max_frames 537): min 3, p25 12, median 21, mean 36.0, p75 42, p90 77,
    p95 112, p99 227, max 537 (real, 405 sequences: 3, 12, 21, 35, 41, 76, 125, 218, 311;
    whole real set max 537).
    ``log_shift`` (scalar or per-draw) lengthens or shortens, e.g. per sign.
    """
    log_length = LENGTH_LOG_MEAN + log_shift + LENGTH_LOG_SD * rng.standard_normal(n)
    lengths = np.rint(LENGTH_SHIFT + np.exp(np.minimum(log_length, 20.0)))
    return np.clip(lengths, MIN_FRAMES, max(MIN_FRAMES, max_frames)).astype(np.int64)


# ---------------------------------------------------------------- body templates


@lru_cache(maxsize=1)
def _face_template() -> np.ndarray:
    """(468, 3) face mesh relative to landmark 17 (image units at scale 1, y down); fixed, not seeded."""
    rng = np.random.default_rng(20230224)
    radius = np.sqrt(rng.uniform(0, 1, 468))
    angle = rng.uniform(0, 2 * np.pi, 468)
    face = np.stack(
        [0.12 * radius * np.cos(angle), -0.10 + 0.16 * radius * np.sin(angle), -0.05 * (1 - radius**2)], axis=1
    )
    face[:, 2] += rng.normal(0, 0.01, 468)
    _place_contour(face, _OUTER_UPPER, (0, -0.013), (0.045, 0.014), upper=True, corners=True)
    _place_contour(face, _OUTER_LOWER, (0, -0.013), (0.045, 0.013), upper=False, corners=False)
    _place_contour(face, _INNER_UPPER, (0, -0.013), (0.035, 0.003), upper=True, corners=True)
    _place_contour(face, _INNER_LOWER, (0, -0.013), (0.035, 0.003), upper=False, corners=False)
    for eye, side in ((REYE, -1.0), (LEYE, 1.0)):
        # Each eye list: outer corner, 7 lower lid, inner corner, 7 upper lid (outer to inner).
        centre, radii = (side * 0.055, -0.115), (0.024, 0.009)
        outer_to_inner = [eye[0], *eye[1:8], eye[8]]
        _place_contour(face, outer_to_inner, centre, radii, upper=False, corners=True, flip=side > 0)
        _place_contour(face, [eye[0], *eye[9:16], eye[8]], centre, radii, upper=True, corners=True, flip=side > 0)
    face[NOSE, :2] = [(0, -0.06), (0, -0.045), (-0.018, -0.048), (0.018, -0.048)]
    face[NOSE, 2] = [-0.08, -0.06, -0.04, -0.04]
    return face


def _place_contour(face, indices, centre, radii, upper, corners, flip=False):
    """Put indices on a half ellipse from the image-left to the image-right end (reversed when flip)."""
    count = len(indices)
    angles = np.linspace(np.pi, 0, count if corners else count + 2)
    if not corners:
        angles = angles[1:-1]
    if flip:
        angles = np.pi - angles
    y_sign = -1.0 if upper else 1.0
    face[indices, 0] = centre[0] + radii[0] * np.cos(angles)
    face[indices, 1] = centre[1] + y_sign * radii[1] * np.sin(angles)
    face[indices, 2] = -0.03


_LOWER_LIP = np.array(_OUTER_LOWER + _INNER_LOWER)
_UPPER_INNER_LIP = np.array(_INNER_UPPER[1:-1])
_MOUTH_CENTRE = np.array([0.0, -0.013])

# Pose landmarks relative to face 17 that do not depend on the hands.
_POSE_FIXED = {
    0: (0.0, -0.06, -1.0), 1: (0.03, -0.115, -0.95), 2: (0.055, -0.117, -0.95), 3: (0.075, -0.115, -0.95),
    4: (-0.03, -0.115, -0.95), 5: (-0.055, -0.117, -0.95), 6: (-0.075, -0.115, -0.95),
    7: (0.11, -0.09, -0.6), 8: (-0.11, -0.09, -0.6), 9: (0.03, -0.01, -0.9), 10: (-0.03, -0.01, -0.9),
    11: (0.2, 0.25, -0.5), 12: (-0.2, 0.25, -0.5), 23: (0.13, 0.8, -0.05), 24: (-0.13, 0.8, 0.05),
    25: (0.14, 1.3, 0.6), 26: (-0.14, 1.3, 0.7), 27: (0.14, 1.8, 1.7), 28: (-0.14, 1.8, 1.8),
    29: (0.14, 1.87, 1.8), 30: (-0.14, 1.87, 1.9), 31: (0.12, 1.9, 0.9), 32: (-0.12, 1.9, 1.0),
}
_POSE_HEAD = np.arange(11)
# (shoulder, elbow, wrist, pinky, index, thumb) pose indices and hand slot of each body side.
_ARMS = {"left_hand": (11, 13, 15, 17, 19, 21), "right_hand": (12, 14, 16, 18, 20, 22)}

# Hand model (canonical right hand, palm to the camera, fingers up, thumb towards +x), in hand lengths.
_FINGER_BASE = np.array([(0.20, -0.12), (0.15, -0.45), (0.02, -0.47), (-0.10, -0.44), (-0.20, -0.38)])
_FINGER_SEGMENTS = np.array(
    [(0.22, 0.20, 0.17), (0.25, 0.15, 0.12), (0.28, 0.17, 0.12), (0.26, 0.16, 0.12), (0.20, 0.12, 0.10)]
)
_JOINT_FLEX = np.array([(0.2, 0.5, 0.5), (1.3, 1.7, 1.1), (1.3, 1.7, 1.1), (1.3, 1.7, 1.1), (1.3, 1.7, 1.1)])
_REST = np.array([-0.22, 0.75])  # canonical dominant hand at rest: below the image
_NOISE_SD = np.full(LANDMARKS_PER_FRAME, 0.004, dtype=np.float32)  # hands
_NOISE_SD[:TYPE_OFFSETS["left_hand"]] = 0.0005  # face mesh: steady
_NOISE_SD[TYPE_OFFSETS["pose"]:TYPE_OFFSETS["right_hand"]] = 0.005  # pose: jittery


# ---------------------------------------------------------------- sign and signer specs


@dataclass(frozen=True)
class SignSpec:
    """What makes a sign: dominant-hand path (canonical right hand), hand shape, lips, other hand."""

    name: str
    centre: np.ndarray  # (2,) wrist position relative to face 17
    harmonics: np.ndarray  # (K, 2 axes, cos/sin)
    curl_start: np.ndarray  # (5,) thumb..pinky, 0 straight .. 1 closed
    curl_end: np.ndarray
    spread: float
    roll: float  # in-image rotation of the hand, radians
    roll_swing: float
    yaw: float
    lip_open: float
    lip_cycles: int
    lip_width: float
    other_hand: str  # "none", "mirror", "alternate", "base"
    length_log_shift: float


@dataclass(frozen=True)
class SignerStyle:
    """What makes a signer: place and size in the image, face shape, habits, handedness."""

    participant_id: int
    left_handed: bool
    anchor: np.ndarray  # (2,) image position of face 17
    scale: float
    face: np.ndarray  # (468, 3) this signer's face template
    location_bias: np.ndarray  # (2,) personal offset of the signing space
    amplitude: float
    noise: float


def make_sign_specs(rng: np.random.Generator, names: Sequence[str]) -> list[SignSpec]:
    num_signs = len(names)
    num_families = max(1, round(num_signs / SIGNS_PER_FAMILY))
    family_centre = np.stack([rng.uniform(-0.30, 0.10, num_families), rng.uniform(-0.15, 0.30, num_families)], 1)
    harmonic_sd = np.array([0.08, 0.04, 0.02])[:, None, None]
    family_harmonics = rng.normal(0, 1, (num_families, 3, 2, 2)) * harmonic_sd
    shapes = rng.choice([0.05, 0.5, 0.95], size=(8, 5))  # a small alphabet of hand shapes
    num_two_handed = max(1, round(TWO_HANDED_FRACTION * num_signs)) if num_signs >= 4 else 0
    two_handed = set(rng.choice(num_signs, num_two_handed, replace=False).tolist())
    # Family of each sign, shuffled so that neighbours in ASCII order are not siblings.
    family_of = rng.permutation(np.arange(num_signs) % num_families)
    specs = []
    for i, name in enumerate(names):
        family = family_of[i]
        curl_start = np.clip(shapes[rng.integers(8)] + rng.normal(0, 0.05, 5), 0, 1)
        changes_shape = rng.random() < 0.4
        curl_end = np.clip(shapes[rng.integers(8)] + rng.normal(0, 0.05, 5), 0, 1) if changes_shape else curl_start
        specs.append(
            SignSpec(
                name=name,
                centre=family_centre[family] + rng.normal(0, 0.02, 2),
                harmonics=family_harmonics[family] + rng.normal(0, 1, (3, 2, 2)) * harmonic_sd * 0.2,
                curl_start=curl_start,
                curl_end=curl_end,
                spread=float(rng.uniform(0, 1)),
                roll=float(rng.uniform(-0.6, 0.6)),
                roll_swing=float(rng.uniform(-0.3, 0.3)),
                yaw=float(rng.uniform(-0.6, 0.6)),
                lip_open=float(rng.uniform(0, 0.015)) if rng.random() < 0.6 else 0.0,
                lip_cycles=int(rng.integers(1, 4)),
                lip_width=float(rng.uniform(-0.12, 0.12)),
                other_hand=_other_hand_kind(rng) if i in two_handed else "none",
                length_log_shift=float(rng.normal(0, 0.15)),
            )
        )
    return specs


def _other_hand_kind(rng) -> str:
    """What the non-dominant hand of a two-handed sign does."""
    return str(rng.choice(["mirror", "alternate", "base"], p=[0.5, 0.2, 0.3]))


def make_signer_styles(rng: np.random.Generator, num_signers: int) -> list[SignerStyle]:
    participant_ids = rng.choice(np.arange(1000, 65536), num_signers, replace=False)
    num_left = round(LEFT_HANDED_FRACTION * num_signers)
    if num_signers >= 2:
        num_left = min(max(num_left, 1), num_signers - 1)  # both kinds, so mirroring matters
    left = np.zeros(num_signers, bool)
    left[rng.choice(num_signers, num_left, replace=False)] = True
    styles = []
    for k in range(num_signers):
        face = _face_template().copy()
        # Personal proportions: wider or narrower eyes and mouth, longer or shorter face.
        face[LEYE + REYE, 0] *= rng.normal(1, 0.05)
        face[LIP, 0] *= rng.normal(1, 0.06)
        face[:, 1] *= rng.normal(1, 0.04)
        styles.append(
            SignerStyle(
                participant_id=int(participant_ids[k]),
                left_handed=bool(left[k]),
                anchor=np.array([rng.uniform(0.40, 0.58), rng.uniform(0.38, 0.50)]),
                scale=float(rng.uniform(1.0, 1.45)),
                face=face,
                location_bias=rng.normal(0, 0.05, 2),
                amplitude=float(rng.normal(1, 0.12)),
                noise=float(rng.uniform(0.7, 1.4)),
            )
        )
    return styles


# ---------------------------------------------------------------- one sequence


def generate_sequence(sign: SignSpec, signer: SignerStyle, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, 543, 3) float64 landmarks of one sequence, NaN where undetected."""
    t = np.linspace(0.0, 1.0, frames)
    lead_in, lead_out = rng.uniform(0.05, 0.30), rng.uniform(0.05, 0.25)
    core = np.clip((t - lead_in) / (1 - lead_in - lead_out), 0, 1)
    warp = rng.uniform(-0.5, 0.5)
    phase = core + warp * np.sin(2 * np.pi * core) / (2 * np.pi)  # monotone: per-sequence speed profile
    amplitude = signer.amplitude * rng.normal(1, 0.2)
    centre = sign.centre + signer.location_bias + rng.normal(0, 0.04, 2)

    dominant_path = _hand_path(sign.harmonics, centre, amplitude, phase)
    dominant_path = _with_entry_and_exit(dominant_path, t, lead_in, lead_out, _REST)
    dominant_shape = _hand_shape(sign, phase, rng)
    dominant = dominant_path[:, None, :2] + HAND_SIZE * dominant_shape[:, :, :2]
    dominant_z = HAND_SIZE * dominant_shape[:, :, 2]

    other, other_z, other_seen = _other_hand(sign, dominant_path, dominant_shape, centre, amplitude, phase, t,
                                              lead_in, lead_out, rng)
    face = _face_frames(signer.face, sign, phase, rng)

    mirror = -1.0 if signer.left_handed else 1.0
    dominant[..., 0] *= mirror
    other[..., 0] *= mirror
    dominant_slot, other_slot = ("left_hand", "right_hand") if signer.left_handed else ("right_hand", "left_hand")
    hands = {dominant_slot: (dominant, dominant_z), other_slot: (other, other_z)}
    seen = {dominant_slot: True, other_slot: other_seen}

    # Per-sequence camera: the signer shifts a little in the chair.
    anchor = signer.anchor + rng.normal(0, 0.015, 2)
    scale = signer.scale * rng.normal(1, 0.03)
    out = np.empty((frames, LANDMARKS_PER_FRAME, 3))
    out[:, :468] = face
    out[:, TYPE_OFFSETS["pose"]:TYPE_OFFSETS["pose"] + 33] = _pose_frames(hands, face, frames)
    for slot, (xy, z) in hands.items():
        start = TYPE_OFFSETS[slot]
        out[:, start:start + 21, :2] = xy
        out[:, start:start + 21, 2] = z
    out *= np.array([scale, scale, 1.0])
    out += np.array([anchor[0], anchor[1], 0.0])
    _add_noise(out, signer.noise * scale, rng)
    for slot in hands:
        _drop_hand_frames(out, slot, seen[slot], rng)
    _drop_face_frames(out, rng)
    return out


def _hand_path(harmonics, centre, amplitude, phase):
    """(T, 2) wrist path: centre plus Fourier harmonics of the sign's phase."""
    k = np.arange(1, len(harmonics) + 1)
    angle = 2 * np.pi * phase[:, None] * k  # (T, K)
    offset = np.cos(angle) @ harmonics[:, :, 0] + np.sin(angle) @ harmonics[:, :, 1]
    return centre + amplitude * offset


def _with_entry_and_exit(path, t, lead_in, lead_out, rest):
    """Blend the path with the rest position (below the image) before lead_in and after 1 - lead_out."""
    rise = _smoothstep(np.clip(t / lead_in, 0, 1))
    fall = _smoothstep(np.clip((1 - t) / lead_out, 0, 1))
    weight = (rise * fall)[:, None]
    return rest + weight * (path - rest)


def _smoothstep(x):
    return x * x * (3 - 2 * x)


def _hand_shape(sign: SignSpec, phase, rng) -> np.ndarray:
    """(T, 21, 3) canonical right hand relative to its wrist, in hand lengths."""
    frames = len(phase)
    curl = sign.curl_start + _smoothstep(phase)[:, None] * (sign.curl_end - sign.curl_start)
    curl = np.clip(curl + rng.normal(0, 0.1, 5), 0, 1)
    spread = np.clip(sign.spread + rng.normal(0, 0.15), 0, 1)
    # Finger direction, radians from "up" towards +x; the thumb folds across the palm as it curls.
    direction = np.broadcast_to(
        np.array([0.9, 0.10 + 0.25 * spread, 0.05 * spread, -0.08 - 0.15 * spread, -0.15 - 0.30 * spread]),
        (frames, 5),
    ).copy()
    direction[:, 0] -= 1.3 * curl[:, 0]
    flex = np.cumsum(curl[:, :, None] * _JOINT_FLEX, axis=2)  # (T, 5, 3) bend of each segment
    in_plane = np.stack([np.sin(direction), -np.cos(direction)], axis=-1)[:, :, None, :]  # (T, 5, 1, 2)
    step_xy = _FINGER_SEGMENTS[..., None] * np.cos(flex)[..., None] * in_plane
    step_z = -_FINGER_SEGMENTS * np.sin(flex)  # bending towards the camera: negative z
    joints_xy = _FINGER_BASE[None, :, None, :] + np.cumsum(step_xy, axis=2)
    joints_z = np.cumsum(step_z, axis=2)
    hand = np.zeros((frames, 21, 3))
    for finger in range(5):
        hand[:, 1 + 4 * finger, :2] = _FINGER_BASE[finger]
        hand[:, 2 + 4 * finger:5 + 4 * finger, :2] = joints_xy[:, finger]
        hand[:, 2 + 4 * finger:5 + 4 * finger, 2] = joints_z[:, finger]
    yaw = sign.yaw + rng.normal(0, 0.2)
    x, z = hand[..., 0].copy(), hand[..., 2].copy()
    hand[..., 0], hand[..., 2] = x * np.cos(yaw) + z * np.sin(yaw), -x * np.sin(yaw) + z * np.cos(yaw)
    roll = (sign.roll + rng.normal(0, 0.2) + sign.roll_swing * np.sin(2 * np.pi * phase))[:, None]
    x, y = hand[..., 0].copy(), hand[..., 1].copy()
    hand[..., 0], hand[..., 1] = x * np.cos(roll) - y * np.sin(roll), x * np.sin(roll) + y * np.cos(roll)
    return hand


def _other_hand(sign, dominant_path, dominant_shape, centre, amplitude, phase, t, lead_in, lead_out, rng):
    """Canonical non-dominant hand: (T, 21, 2) xy, (T, 21) z, and whether it is ever detected."""
    rest = _REST * np.array([-1.0, 1.0])
    mirror_x = np.array([-1.0, 1.0])
    shape = dominant_shape * np.array([-1.0, 1.0, 1.0])
    if sign.other_hand in ("mirror", "alternate"):
        if sign.other_hand == "alternate":
            path = _hand_path(sign.harmonics, centre, amplitude, (phase + 0.5) % 1.0)
            path = _with_entry_and_exit(path, t, lead_in, lead_out, _REST)
        else:
            path = dominant_path
        path = path * mirror_x
    elif sign.other_hand == "base":
        base = np.array([0.06, 0.28]) + rng.normal(0, 0.02, 2)
        path = _with_entry_and_exit(np.broadcast_to(base, (len(t), 2)), t, lead_in, lead_out, rest)
        flat = replace(sign, curl_start=np.full(5, 0.1), curl_end=np.full(5, 0.1), roll=1.3, roll_swing=0.0, yaw=0.4)
        shape = _hand_shape(flat, phase, rng) * np.array([-1.0, 1.0, 1.0])
    else:
        path = np.broadcast_to(rest, (len(t), 2))
    xy = path[:, None, :] + HAND_SIZE * shape[:, :, :2]
    return xy, HAND_SIZE * shape[:, :, 2], sign.other_hand != "none"


def _face_frames(face_template, sign: SignSpec, phase, rng) -> np.ndarray:
    """(T, 468, 3) face with lip motion and a slow head sway."""
    frames = len(phase)
    face = np.broadcast_to(face_template, (frames, 468, 3)).copy()
    jitter = rng.normal(1, 0.2)
    opening = jitter * sign.lip_open * np.sin(np.pi * sign.lip_cycles * phase) ** 2
    width = 1 + jitter * sign.lip_width * np.sin(np.pi * phase)
    face[:, LIP, 0] = _MOUTH_CENTRE[0] + (face[:, LIP, 0] - _MOUTH_CENTRE[0]) * width[:, None]
    face[:, _LOWER_LIP, 1] += opening[:, None]
    face[:, _UPPER_INNER_LIP, 1] -= 0.2 * opening[:, None]
    sway = np.cumsum(rng.normal(0, 0.002, (frames, 2)), axis=0)
    face[:, :, :2] += sway[:, None, :]
    return face


def _pose_frames(hands, face, frames) -> np.ndarray:
    """(T, 33, 3) pose relative to face 17: head follows the face, arms reach the hands."""
    pose = np.zeros((frames, 33, 3))
    for index, point in _POSE_FIXED.items():
        pose[:, index] = point
    head_motion = face[:, 17, :2] - face[:1, 17, :2]
    pose[:, _POSE_HEAD, :2] += head_motion[:, None, :]
    for slot, (xy, _z) in hands.items():
        shoulder, elbow, wrist, pinky, index, thumb = _ARMS[slot]
        side = np.sign(pose[0, shoulder, 0])
        pose[:, wrist, :2] = xy[:, 0]
        pose[:, wrist, 2] = -1.2
        # The elbow hangs below and outside the shoulder-wrist midpoint.
        pose[:, elbow, :2] = 0.5 * (pose[:, shoulder, :2] + xy[:, 0]) + np.array([side * 0.06, 0.12])
        pose[:, elbow, 2] = -0.6
        for pose_index, hand_index in ((pinky, 17), (index, 5), (thumb, 2)):
            pose[:, pose_index, :2] = xy[:, 0] + 0.7 * (xy[:, hand_index] - xy[:, 0])
            pose[:, pose_index, 2] = -1.4
    return pose


def _add_noise(out, scale, rng):
    # Tracking jitter grows with the signer's size in the image; z is not scaled.
    sd = np.stack([scale * _NOISE_SD, scale * _NOISE_SD, 0.5 * _NOISE_SD], axis=1)
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    noise *= sd
    out += noise


def _drop_hand_frames(out, slot, detected, rng):
    """NaN a hand where it is off the image or randomly missed; all frames if never detected."""
    hand = out[:, TYPE_OFFSETS[slot]:TYPE_OFFSETS[slot] + 21]
    if not detected:
        hand[:] = np.nan
        return
    missed = (hand[:, 0, 1] > IMAGE_BOTTOM) | (rng.random(len(hand)) < rng.uniform(0.0, 0.25))
    if missed.all():
        # A hand the sign uses is seen at least once, as in the real data.
        missed[len(hand) // 2] = False
    hand[missed] = np.nan


def _drop_face_frames(out, rng):
    missed = rng.random(len(out)) < 0.003
    out[missed, :468] = np.nan

