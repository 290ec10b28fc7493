import math

import numpy as np

from asl_ray.data import features as F


def test_selection_is_the_winners_118_points():
    assert F.NUM_POINTS == 118
    assert len(set(F.SELECTED_LANDMARKS.tolist())) == 118
    assert F.SELECTED_LANDMARKS[F.CENTRE_POINT] == 17


def test_select_points_drops_frames_with_no_selected_point():
    xyz = np.random.rand(4, 543, 3)
    xyz[1, F.SELECTED_LANDMARKS] = np.nan  # only unselected (pose) points remain in frame 1
    pts = F.select_points(xyz)
    assert pts.shape == (3, 118, 2) and pts.dtype == np.float32
    np.testing.assert_allclose(pts[1], xyz[2, F.SELECTED_LANDMARKS, :2], rtol=1e-6)


def test_features_against_hand_computed_example():
    pts = np.full((3, 118, 2), np.nan, dtype=np.float32)
    pts[:, F.CENTRE_POINT] = (1.0, 2.0)
    pts[0, 0] = (4.0, 2.0)
    pts[1, 0] = (1.0, 6.0)
    feats = F.sequence_features(pts)
    sx, sy = math.sqrt(9 / 5), math.sqrt(16 / 5)  # NaN-std around the centre over the 5 seen points
    assert feats.shape == (3, 708)
    expected = np.zeros((3, 708), np.float32)
    expected[0, 0], expected[1, 1] = 3 / sx, 4 / sy  # positions
    expected[0, 236], expected[0, 237] = -3 / sx, 4 / sy  # dx[0] = p[1] - p[0]; dx[1] touches NaN -> 0
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)


def test_all_nan_sequence_gives_zeros_not_nan():
    feats = F.sequence_features(np.full((5, 118, 2), np.nan, np.float32))
    assert np.all(feats == 0)


def test_mirror_swaps_left_and_right_and_is_an_involution():
    pts = np.random.rand(6, 118, 2).astype(np.float32)
    m = F.mirror(pts)
    left = [F.SELECTED_LANDMARKS.tolist().index(i) for i in F.LEFT_HAND]
    right = [F.SELECTED_LANDMARKS.tolist().index(i) for i in F.RIGHT_HAND]
    np.testing.assert_allclose(m[:, left, 0], 1 - pts[:, right, 0])
    np.testing.assert_allclose(m[:, left, 1], pts[:, right, 1])
    np.testing.assert_allclose(F.mirror(m), pts, atol=1e-6)
    assert F.MIRROR_PERMUTATION[F.CENTRE_POINT] == F.CENTRE_POINT  # the midline stays


def test_augmentations_keep_shape_and_crop_respects_max_len():
    rng = np.random.default_rng(0)
    pts = np.random.rand(50, 118, 2).astype(np.float32)
    assert F.temporal_resample(pts, rng).shape[1:] == (118, 2)
    assert F.random_affine(pts, rng).shape == pts.shape
    assert F.crop_frames(pts, 20, rng).shape == (20, 118, 2)
    np.testing.assert_array_equal(F.crop_frames(pts, 20, None), pts[:20])
    assert np.isnan(F.time_mask(pts, rng)).any()
    assert F.space_mask(pts, rng).shape == pts.shape
