"""From the cache to padded batches: participant split, per-sample features, collate, length bucketing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from asl_ray.config import NUM_FEATURE_CHANNELS, TrainConfig
from asl_ray.data import features as F
from asl_ray.data.cache import SequenceCache


def participant_split(participants: np.ndarray, num_folds: int, fold: int, split_seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): whole signers are held out, so validation is on unseen people."""
    signers = np.unique(participants)
    if len(signers) < 2:
        raise ValueError(f"participant split needs at least 2 participants, the data has {len(signers)}")
    order = np.random.default_rng(split_seed).permutation(signers)
    folds = np.array_split(order, min(num_folds, len(signers)))
    held_out = folds[fold % len(folds)]
    is_val = np.isin(participants, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split_of(cfg: TrainConfig, participants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The config's (train, validation) indices: fold `cfg.fold` of the signers dealt by `cfg.split_seed`."""
    return participant_split(participants, cfg.num_folds, cfg.fold, cfg.split_seed)


def augment(points: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """The winner's training augmentations, each switched by its config flag."""
    if cfg.aug_resample and rng.random() < F.P_RESAMPLE:
        points = F.temporal_resample(points, rng)
    if cfg.aug_mirror and rng.random() < F.P_MIRROR:
        points = F.mirror(points)
    points = F.crop_frames(points, cfg.max_len, rng if cfg.aug_crop else None)
    if cfg.aug_affine and rng.random() < F.P_AFFINE:
        points = F.random_affine(points, rng)
    if cfg.aug_time_mask and rng.random() < F.P_TIME_MASK:
        points = F.time_mask(points, rng)
    if cfg.aug_space_mask and rng.random() < F.P_SPACE_MASK:
        points = F.space_mask(points, rng)
    return points


class SequenceDataset(Dataset):
    """Samples (features (T, 708) float32 with T <= max_len, label) of the cache's sequences `indices`."""

    def __init__(self, cache: SequenceCache, indices: np.ndarray, cfg: TrainConfig, train: bool):
        self.cache, self.indices, self.cfg, self.train = cache, np.asarray(indices), cfg, train
        # In shared memory: persistent loader workers keep their copy of the dataset across epochs and
        # would otherwise replay epoch 0's augmentations forever.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations are a function of (seed, epoch, index): reproducible with any number of workers."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def lengths(self) -> np.ndarray:
        return np.minimum(self.cache.lengths[self.indices], self.cfg.max_len)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        idx = int(self.indices[i])
        points = np.asarray(self.cache.sequence(idx))
        if self.train:
            rng = np.random.default_rng((self.cfg.seed, self.epoch, idx))
            points = augment(points, self.cfg, rng)
        else:
            points = F.crop_frames(points, self.cfg.max_len, None)
        # features_on_device: positions only; the model computes dx/dx2 on the device (GISLRModel.forward).
        feats = F.sequence_positions(points) if self.cfg.features_on_device else F.sequence_features(points)
        return feats, int(self.cache.labels[idx])


@dataclass
class Batch:
    x: torch.Tensor  # (B, L, 708) features, zero on padded frames (positions_only: (B, L, 236) positions)
    mask: torch.Tensor  # (B, L) True on real frames
    y: torch.Tensor  # (B,) labels
    positions_only: bool = False  # x holds positions: the model computes the 708 features (GISLRModel.forward)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(self.x.to(device, non_blocking=non_blocking), self.mask.to(device, non_blocking=non_blocking),
                     self.y.to(device, non_blocking=non_blocking), self.positions_only)

    def pin_memory(self) -> "Batch":
        return Batch(self.x.pin_memory(), self.mask.pin_memory(), self.y.pin_memory(), self.positions_only)

    def __len__(self) -> int:
        return len(self.y)


class PadCollate:
    """Pads a list of samples to `cfg.pad_length(longest)`: the batch's longest sequence, or max_len."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __call__(self, samples: Sequence[tuple[np.ndarray, int]]) -> Batch:
        return pad_to_batch_max(samples, self.cfg.pad_length(max(len(s[0]) for s in samples)),
                                positions_only=self.cfg.features_on_device)


def pad_to_batch_max(samples: Sequence[tuple[np.ndarray, int]], length: int, positions_only: bool = False) -> Batch:
    channels = F.NUM_POSITION_CHANNELS if positions_only else NUM_FEATURE_CHANNELS
    x = torch.zeros(len(samples), length, channels)
    mask = torch.zeros(len(samples), length, dtype=torch.bool)
    for i, (feats, _) in enumerate(samples):
        n = min(len(feats), length)
        x[i, :n] = torch.from_numpy(feats[:n])
        mask[i, :n] = True
    y = torch.tensor([label for _, label in samples], dtype=torch.long)
    return Batch(x, mask, y, positions_only)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar-length sequences (less padding), in a shuffled order every epoch.

    Sequences are sorted by length inside random chunks of `batch_size * 50`, cut into batches, and
    the batches shuffled: similar lengths meet without making every epoch's batches identical.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, chunk_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.chunk = np.asarray(lengths), batch_size, seed, chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 7))
        order = rng.permutation(len(self.lengths))
        step = self.batch_size * self.chunk
        batches = []
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for b in rng.permutation(len(batches)):
            yield batches[b]

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


class ShuffledBatchSampler(Sampler[list[int]]):
    """Plain shuffled batches with the same (seed, epoch) contract as LengthBucketSampler."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng((self.seed, self.epoch, 3)).permutation(self.n) if self.shuffle else np.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            yield order[i:i + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def make_loader(dataset: SequenceDataset, cfg: TrainConfig, train: bool, pin_memory: bool,
                batch_size: Optional[int] = None) -> torch.utils.data.DataLoader:
    bs = batch_size or cfg.batch_size
    if cfg.length_bucketing:  # validation too: less padding to evaluate, and the order does not matter
        sampler: Sampler = LengthBucketSampler(dataset.lengths(), bs, cfg.seed)
    else:
        sampler = ShuffledBatchSampler(len(dataset), bs, cfg.seed, shuffle=train)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=PadCollate(cfg), num_workers=cfg.num_workers,
        pin_memory=pin_memory, persistent_workers=cfg.persistent_workers and cfg.num_workers > 0,
        worker_init_fn=_limit_worker_threads if cfg.num_workers else None)


def _limit_worker_threads(_: int) -> None:
    # Loader workers do numpy work; one thread each keeps them off the training process's cores.
    torch.set_num_threads(1)
