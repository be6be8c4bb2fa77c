"""Oracle: steerkit's DPO and ORPO losses, and the gradient they put on a hooked phase-core
parameter, equal TRL 1.16.0's DPOTrainer / trl.experimental.orpo.ORPOTrainer on the same batch and
model (never skipped: trl is in the dev extra). Also: steerkit tokenises pairs as DPOTrainer does."""

from __future__ import annotations

import copy

import tiny_models
import torch
from datasets import Dataset

from steerkit.models import from_model
from steerkit.phase.couplings import PhaseHook
from steerkit.training import TrainConfig
from steerkit.training import objectives as O
from steerkit.training.pairs import Pair, pair_batch, tokenize_pairs
from steerkit.training.preference import pad_token
from steerkit.training.runs import build_phase

ROWS = [
    {"prompt": "The cat sat on", "chosen": " a warm mat.", "rejected": " the quiet town and she made tea."},
    {"prompt": "She walked home in the rain", "chosen": " and made tea.", "rejected": " over the lazy dog."},
]
LAYER = 1


def _setup(tiny_tok):
    model = tiny_models.build("llama")
    lm = from_model(model, tiny_tok, spec="tiny-llama")
    core, coupling, module = build_phase(TrainConfig(model="tiny"), int(model.get_input_embeddings().weight.shape[1]))
    return model, lm, core, coupling, module


def test_dpo_loss_and_hooked_gradient_equal_trl(tmp_path, tiny_tok):
    from trl import DPOConfig, DPOTrainer

    model, lm, core, coupling, module = _setup(tiny_tok)
    ref_model = copy.deepcopy(model)  # the oracle's explicit reference: the starting model and core
    ref_lm, ref_module = from_model(ref_model, tiny_tok, spec="tiny-llama"), copy.deepcopy(module)
    with torch.no_grad():  # the policy moves away from its reference: non-zero rewards
        core.omega.add_(0.5)
        coupling.alpha.add_(1.0)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True, beta=0.1)
    with (
        PhaseHook(lm, core, coupling, LAYER),
        PhaseHook(ref_lm, ref_module["core"], ref_module["coupling"], LAYER),
    ):
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tiny_tok,
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        loss_trl = trainer.compute_loss(model, batch)
        loss_trl.backward()
        grads_trl = [coupling.u.grad.clone(), core.omega.grad.clone(), core.drive.weight.grad.clone()]
        module.zero_grad(set_to_none=True)
        # steerkit on the same batch
        ids, att, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        sums, _ = O.completion_logps(model(ids, attention_mask=att, use_cache=False).logits, ids, cm)
        with torch.no_grad():
            ref_sums, _ = O.completion_logps(ref_model(ids, attention_mask=att, use_cache=False).logits, ids, cm)
        losses, cr, rr = O.dpo_loss(sums[:2], sums[2:], ref_sums[:2], ref_sums[2:], 0.1)
        losses.mean().backward()
    assert abs(float(losses.mean().detach()) - float(loss_trl.detach())) < 1e-5
    assert float(cr.abs().max()) > 1e-4  # the test had something to compare
    for g_trl, g in zip(grads_trl, [coupling.u.grad, core.omega.grad, core.drive.weight.grad], strict=True):
        assert float(g_trl.abs().max()) > 0
        torch.testing.assert_close(g, g_trl, atol=1e-5, rtol=1e-5)
    # steerkit's own tokenisation and batch give TRL's tokens
    tp = tokenize_pairs(tiny_tok, [Pair(**r, line=i + 1) for i, r in enumerate(ROWS)], seq_len=64)
    mine_ids, mine_att, mine_cm = pair_batch(tp, [0, 1], pad_token(tiny_tok))
    width = int(batch["attention_mask"].sum(1).max())
    assert torch.equal(mine_att, batch["attention_mask"][:, :width])
    assert torch.equal(mine_cm, batch["completion_mask"][:, :width])
    assert torch.equal(mine_ids[mine_att.bool()], batch["input_ids"][:, :width][mine_att.bool()])


def test_orpo_loss_and_hooked_gradient_equal_trl(tmp_path, tiny_tok):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, lm, core, coupling, module = _setup(tiny_tok)
    args = ORPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True, beta=0.1, max_length=64
    )
    with PhaseHook(lm, core, coupling, LAYER):
        trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tiny_tok)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        loss_trl = trainer.compute_loss(model, batch)
        loss_trl.backward()
        grads_trl = [coupling.u.grad.clone(), core.omega.grad.clone()]
        module.zero_grad(set_to_none=True)
        t = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

        def both(key: str, value: int) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(batch[f"{s}_{key}"], (0, t - batch[f"{s}_{key}"].shape[1]), value=value)
                              for s in ("chosen", "rejected")])  # fmt: skip

        ids, att, labels = both("input_ids", 0), both("attention_mask", 0), both("labels", -100)
        logits = model(ids, attention_mask=att, use_cache=False).logits
        _, means = O.completion_logps(logits, ids, (labels != -100).long())
        loss, _ = O.orpo_loss(O.orpo_nll(logits[:2], ids[:2], att[:2]), means[:2], means[2:], 0.1)
        loss.backward()
    assert abs(float(loss.detach()) - float(loss_trl.detach())) < 1e-5
    for g_trl, g in zip(grads_trl, [coupling.u.grad, core.omega.grad], strict=True):
        assert float(g_trl.abs().max()) > 0
        torch.testing.assert_close(g, g_trl, atol=1e-5, rtol=1e-5)


def test_dpo_loss_is_ln2_with_zero_rewards_when_policy_is_reference():
    lp = torch.tensor([-12.0, -3.5, -40.0])
    losses, cr, rr = O.dpo_loss(lp, lp - 1, lp, lp - 1, 0.1)
    torch.testing.assert_close(losses, torch.full((3,), O.LN2))
    assert float(cr.abs().max()) == 0 and float(rr.abs().max()) == 0


def test_log1mexp_is_log_of_one_minus_exp():
    x = torch.tensor([-1e-6, -0.1, -0.69, -0.7, -5.0, -50.0], dtype=torch.float64)
    torch.testing.assert_close(O.log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-9, atol=1e-12)
