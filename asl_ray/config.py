"""TrainConfig: the single source of truth for one training run.

YAML presets, CLI flags and Tune samples are all applied as overrides with
`dataclasses.replace` (see `TrainConfig.with_overrides`); nothing below the CLI
re-reads YAML or looks keys up with defaults.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

PRECISIONS = ("fp16", "bf16", "fp32")
OPTIMIZERS = ("radam", "adamw")
PAD_MODES = ("batch_max", "ladder", "max_len")
COMPILE_MODES = ("default", "reduce-overhead")
NUM_FEATURE_CHANNELS = 708  # 118 points x (x, y) x (position, dx, dx2)



def is_finite_number(v) -> bool:
    """A real number that is not NaN or inf (a bool is not a number here): the one finite check."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

class UserInputError(ValueError):
    """Bad input from a user (a flag, a file, a key, a value): every CLI turns it into one line naming it and exit
    code 2 (asl_ray.cli.user_errors). ConfigError, SpaceError, CardError and DataError are kinds of it."""


class ConfigError(UserInputError):
    """A bad configuration value; the message names every offending key."""


def section(title: str, **metadata: Any) -> dict[str, Any]:
    """Field metadata that starts a section: this field and the ones after it, up to the next section, are
    `title` (the group their flags are listed under in --help)."""
    return {"section": title, **metadata}


@dataclass(frozen=True)
class TrainConfig:
    dim: int = field(default=192, metadata=section("model"))
    """Width of the network (the reference model uses 192; the large one 384)."""
    depth: int = 2
    """Number of (3 x Conv1DBlock + 1 x TransformerBlock) groups: 2 at dim 192, 4 at dim 384."""
    num_heads: int = 4
    """Attention heads per TransformerBlock."""
    kernel_size: int = 17
    """Kernel of the causal depthwise convolution."""
    drop_path: float = 0.2
    """Per-sample residual drop rate in every block (the winner's Dropout(noise_shape=(B,1,1)))."""
    attn_dropout: float = 0.2
    """Dropout on the attention weights."""
    late_dropout: float = 0.8
    """Dropout before the classifier, switched on after `late_dropout_start_epoch`."""
    late_dropout_start_epoch: int = 0
    """Epoch from which the late dropout is active (the winner's warm-up without it)."""

    max_len: int = field(default=384, metadata=section("data"))
    """Longest sequence the model sees: longer ones are cropped (randomly in training)."""
    pad_to: str = field(default="batch_max", metadata={"choices": PAD_MODES})
    """'batch_max' pads a batch to its longest sequence; 'ladder' to the next rung of a fixed ladder of at
    most 12 lengths (asl_ray/ladder.py: few shapes for cuDNN and compile); 'max_len' to max_len."""
    length_bucketing: bool = False
    """Group sequences of similar length into the same batch (less padding)."""
    num_folds: int = 5
    """Participant-grouped folds; validation uses the signers of `fold`."""
    fold: int = 0
    """Which participant fold is held out for validation."""
    split_seed: int = 42
    """Seed of the shuffle that deals the signers into folds: which people `fold` holds out depends on this alone,
    never on `seed`, so runs with other seeds are scored on the same signers (paired comparisons)."""

    aug_resample: bool = field(default=True, metadata=section("augmentations (training only)"))
    """Temporal resample by a factor in [0.5, 1.5]."""
    aug_mirror: bool = True
    """Mirror x with left/right swap of hands, eyes, lips and nose."""
    aug_crop: bool = True
    """Random crop to max_len (otherwise the first max_len frames)."""
    aug_affine: bool = True
    """Random scale, shear, shift and rotation of the 2D points."""
    aug_time_mask: bool = True
    """Mask a random span of frames."""
    aug_space_mask: bool = True
    """Mask a random spatial box of points. (Each augmentation's probability is the winner's: features.P_*.)"""

    epochs: int = field(default=20, metadata=section("optimisation"))
    """Training epochs."""
    batch_size: int = 12
    """Micro-batch size: what one forward/backward holds in memory (and what BatchNorm sees)."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step."""
    lr_per_64: float = 5e-4
    """Learning rate per 64 samples of effective batch (linear scaling rule, the winner's 5e-4/64)."""
    min_lr: float = 1e-6
    """Floor of the cosine schedule."""
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up, in epochs."""
    weight_decay_ratio: float = 0.1
    """Decoupled weight decay as a fraction of the learning rate (the winner's 0.1 x lr)."""
    optimizer: str = field(default="radam", metadata={"choices": OPTIMIZERS})
    """'radam' or 'adamw'."""
    lookahead: bool = True
    """Wrap the optimizer in Lookahead (k=5, alpha=0.5), as the winner did."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing."""
    gradient_clip_val: float = 1.0
    """Max global gradient norm, applied to unscaled gradients; 0 disables clipping."""
    seed: int = 42
    """Seed for model init, sampling and augmentation."""

    precision: str = field(default="fp16", metadata=section("performance switches", choices=PRECISIONS))
    """'fp16' (autocast + GradScaler), 'bf16' (autocast, no scaler) or 'fp32'. CUDA only; CPU runs fp32."""
    compile: bool = False
    """torch.compile the model (one graph, no break); falls back to eager with a warning if compilation fails
    (never on an out-of-memory error). Under pad_to 'ladder' or 'max_len' the time length is static: at most one
    compilation per rung (and mode train/eval); under 'batch_max' shapes are dynamic."""
    compile_mode: str = field(default="default", metadata={"choices": COMPILE_MODES})
    """torch.compile mode when `compile` is on: 'default' or 'reduce-overhead' (CUDA graphs, one per captured
    shape: best with pad_to 'ladder'). CUDA only: a CPU runs 'default', and the result records the mode run."""
    cudnn_benchmark: bool = True
    """torch.backends.cudnn.benchmark."""
    cudnn_workspace_cap_mb: int = 64
    """Cap on what one cuDNN convolution may allocate as workspace, in MiB: both benchmark's algorithm trials
    and the chosen algorithm (PyTorch's documented CUDNN_CONV_WSCAP_DBG, set for the process before its first
    CUDA convolution). Bounds the fp16 depthwise conv's workspace so the VRAM estimate can count it. CUDA only."""
    num_workers: int = 4
    """DataLoader worker processes."""
    pin_memory: bool = True
    """Pinned host memory for batches (with non-blocking copies); CUDA only."""
    empty_cache_every: int = 0
    """Call torch.cuda.empty_cache() every N micro-batches; 0 never does."""
    throughput_warmup_steps: int = 5
    """Micro-batches at the start of each epoch left out of the throughput figures."""
    max_steps_per_epoch: int = 0
    """Stop an epoch after this many micro-batches (benchmarks, smoke runs); 0 runs the full epoch."""
    foreach_optimizer: bool = False
    """Multi-tensor optimizer path on every device: RAdam `foreach=True` (AdamW `fused=True`), Lookahead's
    slow-weight update as two `torch._foreach_*` ops, clipping's norm with `foreach=True`. Off leaves torch's
    defaults (foreach on CUDA only). Same update up to float rounding (tests/test_eager_launches.py)."""
    features_on_device: bool = False
    """Send only the 236 position channels to the device and compute dx/dx2 there, as the model's first step
    (a third of the host-to-device bytes; compiled, one fused kernel); the same features as the host path,
    bit for bit (asl_ray/data/features.py)."""
    persistent_workers: bool = True
    """Keep DataLoader workers alive across epochs (no re-spawn of the train and validation workers per epoch:
    0.20 s an epoch at 4 workers, bench/persistent_workers.py); nothing to keep with num_workers 0."""
    host_step_counts: bool = True
    """RAdam with each parameter's step count a Python int (asl_ray/train/radam.py, multi-tensor ops): its
    rectification and bias-correction scalars are computed once per step on the host, where torch's RAdam reads
    a tensor step with `.item()` five times per parameter (355 host reads per step here). On, RAdam is
    multi-tensor whatever foreach_optimizer says; off, torch.optim.RAdam. AdamW is unaffected."""
    foreach_grad_accumulation: bool = False
    """Add each later micro-batch's gradients into .grad with one `torch._foreach_add_` (from
    `torch.autograd.grad`) instead of AccumulateGrad's `add_` per parameter; the same sums. Holds up to one more
    fp32 copy of the parameters at the end of those backwards (the VRAM estimate counts it)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid TrainConfig: " + "; ".join(problems))

    # ---- derived values ----------------------------------------------------------------------
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def learning_rate(self) -> float:
        """Peak learning rate: linear in the effective batch so batch x accumulation compare fairly."""
        return self.lr_per_64 * self.effective_batch_size() / 64

    def weight_decay(self) -> float:
        return self.weight_decay_ratio * self.learning_rate()

    def pad_length(self, longest_in_batch: int) -> int:
        """Time length a batch is padded to."""
        if self.pad_to == "ladder":
            from asl_ray.ladder import pad_to_ladder
            return pad_to_ladder(longest_in_batch, self.max_len)
        return self.max_len if self.pad_to == "max_len" else min(longest_in_batch, self.max_len)

    # ---- validation --------------------------------------------------------------------------
    def problems(self) -> list[str]:
        p: list[str] = []
        for f in fields(self):
            v = getattr(self, f.name)
            expected = FIELD_TYPES[f.name]
            if expected is float and isinstance(v, int) and not isinstance(v, bool):
                continue
            if expected is int and isinstance(v, bool) or not isinstance(v, expected):
                p.append(f"{f.name}: expected {expected.__name__}, got {type(v).__name__} {v!r}")
        if p:
            return p  # range checks below assume the types are right
        # NaN fails no comparison, so it would pass every range check below (and `gradient_clip_val > 0`
        # would silently switch clipping off): every float field, present or future, must be finite.
        not_finite = {name for name, t in FIELD_TYPES.items()
                      if t is float and not math.isfinite(getattr(self, name))}
        p.extend(f"{name}: must be a finite number, got {getattr(self, name)!r}" for name in sorted(not_finite))

        def positive(name: str) -> None:
            if name not in not_finite and getattr(self, name) <= 0:
                p.append(f"{name}: must be > 0, got {getattr(self, name)!r}")

        def non_negative(name: str) -> None:
            if name not in not_finite and getattr(self, name) < 0:
                p.append(f"{name}: must be >= 0, got {getattr(self, name)!r}")

        def fraction(name: str) -> None:
            v = getattr(self, name)
            if name not in not_finite and not 0.0 <= v < 1.0:
                p.append(f"{name}: must be in [0, 1), got {v!r}")

        for name in ("dim", "depth", "num_heads", "kernel_size", "max_len", "epochs", "batch_size",
                     "gradient_accumulation_steps", "num_folds", "lr_per_64"):
            positive(name)
        for name in ("late_dropout_start_epoch", "fold", "min_lr", "warmup_epochs", "weight_decay_ratio",
                     "gradient_clip_val", "num_workers", "empty_cache_every", "throughput_warmup_steps",
                     "max_steps_per_epoch", "split_seed", "seed",
                     "cudnn_workspace_cap_mb"):
            non_negative(name)
        for name in ("drop_path", "attn_dropout", "late_dropout", "label_smoothing"):
            fraction(name)
        if self.dim > 0 and self.num_heads > 0 and self.dim % self.num_heads:
            p.append(f"dim: {self.dim} must be divisible by num_heads ({self.num_heads})")
        if self.num_folds > 0 and self.fold >= self.num_folds:
            p.append(f"fold: must be < num_folds ({self.num_folds}), got {self.fold}")
        if self.num_folds == 1:
            p.append("num_folds: must be >= 2 so a participant fold can be held out")
        if self.precision not in PRECISIONS:
            p.append(f"precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            p.append(f"optimizer: must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.pad_to not in PAD_MODES:
            p.append(f"pad_to: must be one of {', '.join(PAD_MODES)}, got {self.pad_to!r}")
        if self.compile_mode not in COMPILE_MODES:
            p.append(f"compile_mode: must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        lr_is_finite = not not_finite & {"lr_per_64", "min_lr"}
        if lr_is_finite and self.learning_rate() > 0 and self.min_lr >= self.learning_rate():
            p.append(f"min_lr: {self.min_lr} must be below the peak learning rate {self.learning_rate():.3g}")
        return p

    # ---- overrides ---------------------------------------------------------------------------
    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> "TrainConfig":
        """A copy with `overrides` applied; unknown keys and bad values raise one ConfigError naming `source`. A key
        of RETIRED_KEYS at its old default (what every earlier best_config.yaml and checkpoint holds) is dropped."""
        retired = sorted(k for k in overrides if k in RETIRED_KEYS and overrides[k] != RETIRED_KEYS[k])
        if retired:
            raise ConfigError(f"{source}: {', '.join(retired)}: no longer a config key (fault injection is the test "
                              f"suite's, asl_ray/faults.py)")
        overrides = {k: v for k, v in overrides.items() if k not in RETIRED_KEYS}
        unknown = sorted(set(overrides) - set(FIELD_NAMES))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} "
                              f"(known: see asl_ray/config.py TrainConfig)")
        try:
            return dataclasses.replace(self, **dict(overrides))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        return cls().with_overrides(d, source=source)

    def to_yaml(self, path: Path, header: str = "") -> None:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        Path(path).write_text((header + "\n" if header else "") + text)


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
RETIRED_KEYS = {"inject_oom_at_step": 0, "inject_nan_at_step": 0, "inject_worker_kill_at_epoch": 0,
                "inject_worker_kill_in_plan_search": 0}
"""Keys earlier versions wrote into every config file and checkpoint, with the value they always held there: read
back, they are dropped (a saved best_config.yaml still trains, a checkpoint still resumes); any other value is an
error."""
FIELD_TYPES = {f.name: {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
               for f in fields(TrainConfig)}
"""Every TrainConfig key's Python type (the annotations are strings under `from __future__ import annotations`)."""


@functools.lru_cache(maxsize=None)
def documented_fields(cls: type = TrainConfig) -> tuple[tuple[str, str, str], ...]:
    """(section, field name, docstring on one line) in declaration order for a dataclass (TrainConfig,
    SearchConfig, a CLI's arguments). The section comes from the `section(...)` metadata in force; the docstring,
    a string literal after the field, is not kept at runtime, so it is read from the class's source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {node.target.id: " ".join(after.value.value.split()) for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)}
    out, title = [], ""
    for f in fields(cls):
        title = f.metadata.get("section", title)
        out.append((title, f.name, docs.get(f.name, "")))
    return tuple(out)


def field_docs() -> dict[str, str]:
    """{field name: its docstring, on one line} for every TrainConfig field (what `--help` lists)."""
    return {name: doc for _, name, doc in documented_fields()}


def field_sections() -> dict[str, list[str]]:
    """{section title ('model', 'data', ...): its field names}, both in declaration order."""
    out: dict[str, list[str]] = {}
    for section, name, _ in documented_fields():
        out.setdefault(section, []).append(name)
    return out


def load_config_yaml(path: str | Path, base: Optional[TrainConfig] = None) -> TrainConfig:
    """Read a YAML preset (a flat mapping of TrainConfig keys) and apply it over `base`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig keys, got {type(data).__name__}")
    return (base or TrainConfig()).with_overrides(data, source=str(path))
