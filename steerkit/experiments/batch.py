"""The teacher-forced batch both experiments use: a prompt and its continuation as token ids
(`Prepared`), right-padded into one batch (`tf_batch`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prepared:
    text: str
    continuation: str
    prompt_ids: list[int]
    cont_ids: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.cont_ids)


def tf_batch(prompts: list[Prepared], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + continuation of each prompt, right-padded: ids and mask (b, T_max). Right padding
    never changes the real positions of a causal (or recurrent) model, nor the phases there."""
    from ..capture.forward import pad

    return pad([p.prompt_ids + p.cont_ids for p in prompts], pad_id, "right")
