"""TrainConfig: every hyper-parameter of a phase-core training run (saved as config.json)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from ..errors import TrainingConfigError
from ..models import zoo
from ..phase.core import PhaseConfig
from ..phase.couplings import CouplingConfig
from ..validate import nonfinite_fields

CONFIG_VERSION = 1
Objective = Literal["ce", "dpo", "orpo"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
OptimizerName = Literal["adamw", "apollo", "apollo-mini"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of `steerkit train-phase`; the CLI options mirror these fields.

    Loss (objective 'ce'): L = CE + lam * mean_tokens |U - u_target|, U = H(p) / log V (phase/metrics.py).
    objective 'dpo' / 'orpo': the preference loss on `pairs` (training/objectives.py) + the same
        lam |U - u_target| over the completion tokens; beta is DPO's beta or ORPO's lambda.
    parent: a finished run whose core, coupling, block, LoRA and trained base weights are the start.
    optimizer: for trained base weights (unfrozen blocks, LoRA): AdamW or APOLLO / APOLLO-Mini
        (apollo-torch; apollo_rank overrides their rank 256 / 1); the phase core always uses AdamW.
    layer: a block index, or a layer spec string ('0.5' = a fraction of depth, '-1' = last);
        resolved to an int when the run starts (config.json holds the int).
    unfreeze: block indices (or a block spec string such as '10:-1', resolved when the run starts)
        of the base model trained too (lr base_lr); the rest stays frozen.
    lora_rank: > 0 trains LoRA adapters (peft; rank lora_rank, scale lora_alpha / lora_rank, lr
        lora_lr) on every linear layer of lora_blocks (empty: every block); the base stays frozen.
    Validation: every val_every steps on val_batches batches of a held-out val_fraction of the texts.
    Early stopping after `patience` validations without improvement. Plateau: no improvement for
    plateau_share of the steps (at least 2 validations) multiplies the lr by lr_factor; after
    max_bad_reductions reductions without improvement training stops.
    """

    model: str = zoo.DEFAULT_MODEL
    dtype: str | None = None
    texts: tuple[str, ...] = ()  # empty: the stories under corpora/stories
    layer: int | str = "0.5"
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    direction: str | None = None  # additive: READOUT_DIR:CONCEPT or FILE.safetensors[:KEY] (see runs.load_direction)
    seq_len: int = 64
    batch_size: int = 4
    steps: int = 200
    lr: float = 3e-3
    base_lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lam: float = 0.1
    u_target: float = 0.5
    val_fraction: float = 0.1
    val_every: int = 10
    val_batches: int = 2
    patience: int = 10
    plateau_share: float = 0.2
    lr_factor: float = 0.5
    max_bad_reductions: int = 2
    checkpoint_every: int = 50
    keep_last: int = 5
    seed: int = 0
    unfreeze: tuple[int, ...] | str = ()
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_lr: float = 1e-4
    lora_blocks: tuple[int, ...] | str = ()
    objective: Objective = "ce"
    pairs: str | None = None
    beta: float = 0.1
    parent: str | None = None
    optimizer: OptimizerName = "adamw"
    apollo_rank: int | None = None
    r_band: tuple[float, float] = (0.80, 0.95)
    grad_ratio_band: tuple[float, float] = (0.3, 3.0)
    collapse_threshold: float = 1e-6

    def __post_init__(self) -> None:
        bad = nonfinite_fields(self)
        if bad:
            raise TrainingConfigError(f"{', '.join(bad)} must be finite numbers (got NaN or inf)")
        pos_int = ("seq_len", "batch_size", "steps", "val_every", "val_batches", "patience", "checkpoint_every")
        for name in pos_int:
            if int(getattr(self, name)) < 1:
                raise TrainingConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise TrainingConfigError(f"seq_len must be >= 2 (next-token prediction), got {self.seq_len}")
        if self.keep_last < 1 or self.max_bad_reductions < 1:
            raise TrainingConfigError("keep_last and max_bad_reductions must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainingConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not 0.5 <= self.lr_factor <= 0.7:
            raise TrainingConfigError(f"lr_factor must lie in [0.5, 0.7] (a 30-50% reduction), got {self.lr_factor}")
        if not 0.0 < self.plateau_share <= 1.0:
            raise TrainingConfigError(f"plateau_share must lie in (0, 1], got {self.plateau_share}")
        if self.lr <= 0 or self.base_lr <= 0 or self.grad_clip <= 0 or self.lam < 0:
            raise TrainingConfigError("lr, base_lr and grad_clip must be > 0 and lam >= 0")
        if not 0.0 <= self.u_target <= 1.0:
            raise TrainingConfigError(f"u_target must lie in [0, 1], got {self.u_target}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise TrainingConfigError(f"dtype must be one of None, float32, bfloat16, float16, got {self.dtype!r}")
        if self.direction and self.coupling.name != "additive":
            raise TrainingConfigError(f"--direction only applies to the additive coupling, not {self.coupling.name!r}")
        if self.lora_rank < 0 or self.lora_alpha <= 0 or self.lora_lr <= 0:
            raise TrainingConfigError("lora_rank must be >= 0, lora_alpha and lora_lr > 0")
        if self.lora_blocks and not self.lora_rank:
            raise TrainingConfigError("--lora-blocks needs --lora-rank > 0")
        if self.objective not in OBJECTIVES:
            raise TrainingConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective != "ce" and not self.pairs:
            raise TrainingConfigError(
                f"--objective {self.objective} needs --pairs FILE (prompt, chosen, rejected JSONL)"
            )
        if self.objective == "ce" and self.pairs:
            raise TrainingConfigError("--pairs needs --objective dpo or orpo")
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta > 0):
            raise TrainingConfigError(f"--beta must be a finite number > 0, got {self.beta}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.apollo_rank is not None and self.apollo_rank < 1:
            raise TrainingConfigError(f"--apollo-rank must be >= 1, got {self.apollo_rank}")
        lo, hi = self.r_band
        if not 0.0 <= lo < hi <= 1.0:
            raise TrainingConfigError(f"r_band must satisfy 0 <= low < high <= 1, got {self.r_band}")
        if not 0.0 < self.grad_ratio_band[0] < self.grad_ratio_band[1]:
            raise TrainingConfigError(f"grad_ratio_band must satisfy 0 < low < high, got {self.grad_ratio_band}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = CONFIG_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d.pop("version", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainingConfigError(f"unknown training config keys {unknown}")
        if isinstance(d.get("phase"), dict):
            d["phase"] = PhaseConfig(**d["phase"])
        if isinstance(d.get("coupling"), dict):
            d["coupling"] = CouplingConfig(**d["coupling"])
        for k in ("texts", "unfreeze", "lora_blocks", "r_band", "grad_ratio_band"):
            if k in d and isinstance(d[k], list | tuple):
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return TrainConfig(**d)
