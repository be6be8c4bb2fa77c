"""Couplings: how the order parameter R touches the model, applied through removable hooks.

With g(R) = R - center and a learnable strength alpha:
- multiplicative:  h <- h * (1 + alpha g(R))            at the block output (the seeds' original;
                    a following RMSNorm/LayerNorm divides the factor away again: see tests);
- additive:        h <- h + alpha g(R) rms(h) u / |u|   at the block output; u learnable or a given
                    direction (e.g. a concept vector), scaled to the residual norm of each token;
- gate:            m <- m * (1 + alpha g(R))            on the mixer's write into the residual stream
                    (attention o_proj, Gated DeltaNet / Mamba out_proj, RWKV attention.output;
                    Gemma 2/3: the post-attention norm after o_proj, which would divide a factor on
                    o_proj away), i.e. R scales the mixer's contribution to the residual stream.

The drive of the core is the residual stream at the coupled block: its output for the block-output
couplings, its input for `gate` (R must be known before the mixer runs). The user's model is never
wrapped or mutated: `PhaseHook` registers forward hooks and removes them on exit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from .core import PhaseCore, PhaseOutput

CouplingName = Literal["multiplicative", "additive", "gate"]
COUPLINGS: tuple[str, ...] = get_args(CouplingName)
Site = Literal["block_output", "mixer_output"]


@dataclass(frozen=True)
class CouplingConfig:
    name: CouplingName = "additive"
    alpha: float = 0.1  # initial strength
    learn_alpha: bool = True
    center: float = 0.5  # g(R) = R - center
    learn_direction: bool = True  # additive: train u (False: keep the given / initial direction)

    def __post_init__(self) -> None:
        if self.name not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Coupling(nn.Module):
    """Base strategy: `couple(x, r)` for x (batch, seq, hidden) and r (batch, seq)."""

    name: str = ""
    site: Site = "block_output"

    def __init__(self, config: CouplingConfig) -> None:
        super().__init__()
        self.config = config
        a = torch.tensor(float(config.alpha))
        if config.learn_alpha:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a)

    def g(self, r: torch.Tensor) -> torch.Tensor:
        return r - self.config.center  # (batch, seq)

    def couple(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Multiplicative(Coupling):
    """h * (1 + alpha g(R)): a per-token scale, which the next normalisation erases."""

    name = "multiplicative"

    def couple(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        f = 1 + self.alpha * self.g(r)  # (batch, seq)
        return x * f.unsqueeze(-1).to(x.dtype)  # (batch, seq, hidden)


class Additive(Coupling):
    """h + alpha g(R) rms(h) u/|u|: moves the residual along a direction, surviving normalisation."""

    name = "additive"

    def __init__(self, config: CouplingConfig, hidden_size: int, direction: torch.Tensor | None = None) -> None:
        super().__init__(config)
        if direction is None:
            u = torch.randn(hidden_size)
        else:
            u = torch.as_tensor(direction, dtype=torch.float32).detach().clone().reshape(-1)
            if u.numel() != hidden_size or not torch.isfinite(u).all() or float(u.norm()) == 0:
                raise ValueError(f"direction must be a finite non-zero ({hidden_size},) vector, got {tuple(u.shape)}")
        u = u / u.norm()
        if config.learn_direction:
            self.u = nn.Parameter(u)
        else:
            self.register_buffer("u", u)

    def couple(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        unit = self.u / self.u.norm()  # (hidden,)
        rms = x.float().pow(2).mean(-1, keepdim=True).sqrt()  # (batch, seq, 1)
        shift = (self.alpha * self.g(r)).unsqueeze(-1) * rms * unit  # (batch, seq, hidden)
        return x + shift.to(x.dtype)


class Gate(Multiplicative):
    """mixer_out * (1 + alpha g(R)): R gates the mixer's write into the residual stream."""

    name = "gate"
    site = "mixer_output"


def make_coupling(config: CouplingConfig, hidden_size: int, direction: torch.Tensor | None = None) -> Coupling:
    """The coupling strategy named by config.name."""
    if config.name == "additive":
        return Additive(config, hidden_size, direction)
    if direction is not None:
        raise ValueError(f"a direction only applies to the additive coupling, not {config.name!r}")
    return Multiplicative(config) if config.name == "multiplicative" else Gate(config)


def check_layer(lm: Any, layer: int) -> int:
    """A block index in range (negative counts from the end), through the one block checker."""
    from ..capture.layers import check_blocks

    return check_blocks([layer], lm.adapter.n_blocks(lm.model))[0]


class PhaseHook:
    """Context manager coupling `core` into `lm.model` at block `layer` with `coupling`.

    Every forward pass of the model inside the `with` runs the core on the residual stream at
    that block and applies the coupling. `outputs` collects one PhaseOutput per forward call
    (`last` is the latest). With carry_state=True the phases continue from one forward call to
    the next (incremental decoding); call `reset()` between independent sequences. `mask`
    (batch, seq) may be set before a forward pass of a padded batch. On a model sharded over
    devices, entering moves the core and the coupling to the coupled block's device, and the core
    reads the hidden state, mask and carried phases there.
    """

    def __init__(
        self,
        lm: Any,
        core: PhaseCore,
        coupling: Coupling,
        layer: int,
        *,
        carry_state: bool = False,
        keep: int | None = 1,
    ) -> None:
        self.lm, self.core, self.coupling = lm, core, coupling
        self.layer = check_layer(lm, layer)
        self.carry_state = carry_state
        self.keep = keep
        self.outputs: list[PhaseOutput] = []
        self.mask: torch.Tensor | None = None
        self._state: torch.Tensor | None = None
        self._current: PhaseOutput | None = None
        self._handles: list[Any] = []

    @property
    def last(self) -> PhaseOutput:
        if not self.outputs:
            raise RuntimeError("no forward pass has run inside the PhaseHook yet")
        return self.outputs[-1]

    def reset(self) -> None:
        self._state, self.outputs = None, []

    def repeat_state(self, n: int) -> None:
        """Repeat the carried phases n times per row (batch -> batch * n), in step with a KV cache
        repeated by `batch_repeat_interleave(n)` when one prompt prefix feeds n samples."""
        if self._state is not None:
            self._state = self._state.repeat_interleave(n, 0)

    def _run_core(self, h: torch.Tensor) -> PhaseOutput:
        state = self._state if self.carry_state else None
        mask = self.mask.to(h.device) if self.mask is not None else None
        out = self.core(h, state.to(h.device) if state is not None else None, mask)
        if self.carry_state:
            self._state = out.state.detach()
        self.outputs.append(out)
        if self.keep is not None and len(self.outputs) > self.keep:
            del self.outputs[: len(self.outputs) - self.keep]
        return out

    # hooks ----------------------------------------------------------------------------
    def _block_output_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        a = self.lm.adapter
        h = a.get_hidden(output)
        out = self._run_core(h)
        if out.r_applied is None:
            return None
        return a.replace_hidden(output, self.coupling.couple(h, out.r_applied.to(h.device)))

    def _block_input_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        h = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"block {self.layer} received no hidden-state tensor to drive the phase core")
        self._current = self._run_core(h)

    def _mixer_output_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        out = self._current
        if out is None or out.r_applied is None:
            return None
        a = self.lm.adapter
        m = a.get_hidden(output)
        if m.shape[:2] != out.r_applied.shape:
            raise RuntimeError(f"mixer output {tuple(m.shape)} does not match R {tuple(out.r_applied.shape)}")
        return a.replace_hidden(output, self.coupling.couple(m, out.r_applied.to(m.device)))

    def __enter__(self) -> PhaseHook:
        a, model = self.lm.adapter, self.lm.model
        block = a.blocks(model)[self.layer]
        self.reset()
        dev = a.block_device(model, self.layer)  # the block's own device on a sharded model
        for m in (self.core, self.coupling):
            if isinstance(m, nn.Module):
                m.to(dev)
        try:
            if self.coupling.site == "mixer_output":
                self._handles.append(block.register_forward_pre_hook(self._block_input_hook, with_kwargs=True))
                mixer = a.mixer_write_module(model, self.layer)
                self._handles.append(mixer.register_forward_hook(self._mixer_output_hook))
            else:
                self._handles.append(block.register_forward_hook(self._block_output_hook))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._current = None

    def __exit__(self, *exc: object) -> None:
        self._remove()
