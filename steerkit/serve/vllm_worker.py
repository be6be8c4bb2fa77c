"""steerkit's vLLM worker extension: forward hooks on the decoder blocks the adapter names, which steer
each request by its own edit and keep its readout rows, inside vLLM's model runner (imported by vLLM
in its worker, never by steerkit's server process itself).

Per step, vLLM runs one flat batch: request i's tokens are rows query_start_loc[i]:query_start_loc[i+1]
of every block's output, in the order of `input_batch.req_ids`. A request's settings ride in its
`SamplingParams.extra_args["steerkit"]` = {"id", "concepts", "layers", "mode", "scale", "read_layer",
"read_idx"}; the edit is built once per request from the concept vectors loaded at start (the server's
requests name concepts only; steer-eval's arms, random directions included, pass "directions" as numbers). Llama-style blocks return (hidden, residual) and the residual stream the next block
reads is their sum: steering edits that sum (by changing `hidden`), readouts read it.

Needs eager mode: a hook added after CUDA-graph / torch.compile capture is never called.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


class SteerkitWorkerExtension:
    """Mixed into vLLM's Worker (`worker_extension_cls`); called through `collective_rpc`."""

    def steerkit_setup(self, run: str, spec: str) -> dict[str, Any]:
        """Load the concept vectors of `run` and hook the blocks; returns what was hooked."""
        from ..models.adapters import adapter_for
        from ..vectors import ConceptVectors

        runner = getattr(self, "model_runner", None)
        if runner is None or not hasattr(runner, "input_batch") or not hasattr(runner, "requests"):
            raise RuntimeError("this vLLM's model runner has no input_batch / requests (V2 runner?): steerkit "
                               "cannot slice its batch per request")  # fmt: skip
        model = runner.model
        self._sk_cv = ConceptVectors.load(run)
        self._sk_adapter = adapter_for(model)
        blocks = self._sk_adapter.blocks(model)
        self._sk_edits: dict[str, Any] = {}
        self._sk_rows: dict[str, list[torch.Tensor]] = {}
        self._sk_handles = [blocks[la].register_forward_hook(self._sk_hook(la)) for la in range(len(blocks))]
        self._sk_calls = 0
        self._sk_pass: tuple[Any, Any, Any] = (None, [], None)
        return {"blocks": len(blocks), "hidden": self._sk_cv.hidden_size, "spec": spec}

    def steerkit_drain(self) -> dict[str, list[list[float]]]:
        """The readout rows (scores) kept since the last drain, per steerkit request id."""
        out = {k: torch.cat(v).tolist() for k, v in self._sk_rows.items() if v}
        self._sk_rows = {}
        return out

    def steerkit_forget(self, ids: list[str]) -> None:
        for i in ids:
            self._sk_edits.pop(i, None)
            self._sk_rows.pop(i, None)

    def steerkit_calls(self) -> int:
        return int(self._sk_calls)

    # ---- the hook --------------------------------------------------------------------------------
    def _sk_settings(self) -> tuple[list[dict[str, Any] | None], Any]:
        """Each request's settings (None: plain) and the row bounds [(a, b)] of this forward pass, read
        once per pass (the first hooked block) and reused by the others."""
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return [], None
        fc = get_forward_context()
        if self._sk_pass[0] is fc:
            return self._sk_pass[1], self._sk_pass[2]
        settings, loc = self._sk_read_settings(fc)
        self._sk_pass = (fc, settings, loc)
        return settings, loc

    def _sk_read_settings(self, fc: Any) -> tuple[list[dict[str, Any] | None], Any]:
        runner = self.model_runner  # type: ignore[attr-defined]
        n = runner.input_batch.num_reqs
        if n == 0:
            return [], None
        meta = fc.attn_metadata
        if isinstance(meta, list):
            meta = meta[0]
        if meta is None:
            return [], None
        loc = None
        for m in meta.values() if isinstance(meta, dict) else [meta]:
            if hasattr(m, "query_start_loc"):
                loc = m.query_start_loc
                break
        settings: list[dict[str, Any] | None] = []
        for rid in runner.input_batch.req_ids[:n]:
            st = runner.requests.get(rid)
            extra = st.sampling_params.extra_args if st is not None and st.sampling_params is not None else None
            settings.append((extra or {}).get("steerkit"))
        if loc is None or not any(x is not None for x in settings):
            return settings, None
        bounds = [(int(a), int(b)) for a, b in zip(loc[:-1].tolist(), loc[1:].tolist(), strict=True)]
        return settings, bounds

    def _sk_edit(self, s: dict[str, Any]) -> Any:
        key = s["id"]
        if key not in self._sk_edits:
            from ..generation import RowEdit
            from ..steering import concept_basis, steering_direction

            cv, w = self._sk_cv, s.get("concepts") or {}
            layers, mode, scale = s.get("layers") or [], s.get("mode", "add"), s.get("scale", "absolute")
            raw = s.get("directions")  # {layer: [floats]}: a direction given as numbers (steer-eval's arms)
            if raw:
                d = {int(la): torch.tensor(v, dtype=torch.float32) for la, v in raw.items()}
                self._sk_edits[key] = RowEdit(d, scale, "add") if any(bool(x.any()) for x in d.values()) else None
            elif not w or (mode == "add" and not any(w.values())):
                self._sk_edits[key] = None
            else:
                dirs = {int(la): steering_direction(cv, w, int(la), scale) for la in layers}
                bases = {int(la): concept_basis(cv, list(w), int(la)) for la in layers} if mode != "add" else {}
                self._sk_edits[key] = RowEdit(dirs, scale, mode, bases)
        return self._sk_edits[key]

    def _sk_hook(self, layer: int) -> Any:
        from ..steering import edit_hidden

        def fn(module: Any, args: Any, output: Any) -> Any:
            settings, loc = self._sk_settings()
            if loc is None:
                return None
            edits: list[Any] = [self._sk_edit(s) if s is not None else None for s in settings]
            todo = [i for i, s in enumerate(settings) if s is not None and (
                s.get("read_layer") == layer or (edits[i] is not None and edits[i].acts_at(layer)))]  # fmt: skip
            if not todo:
                return None  # nothing to steer or read at this block in this pass
            self._sk_calls += 1
            hidden, residual = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
            stream = hidden if residual is None else hidden + residual  # (tokens, hidden): what the next block reads
            new_hidden = None
            for i in todo:
                s, e = settings[i], edits[i]
                assert s is not None
                a, b = loc[i]
                if e is not None and e.acts_at(layer):
                    if new_hidden is None:
                        new_hidden = hidden.clone()
                    seen = stream[a:b]
                    d = e.directions.get(layer, torch.zeros(seen.shape[-1]))
                    edited = edit_hidden(seen[None], d, e.bases.get(layer), e.scale, e.mode)[0]
                    new_hidden[a:b] = edited - (residual[a:b] if residual is not None else 0)
                if s.get("read_layer") == layer:
                    h = (new_hidden[a:b] + residual[a:b]) if new_hidden is not None and residual is not None else (
                        new_hidden[a:b] if new_hidden is not None else stream[a:b])  # fmt: skip
                    sc = self._sk_cv.read_scores(h.float().cpu(), layer)  # as `read` reads
                    idx = s.get("read_idx")
                    self._sk_rows.setdefault(s["id"], []).append(sc[:, idx] if idx is not None else sc)
            if new_hidden is None:
                return None
            return (new_hidden, *output[1:]) if isinstance(output, tuple) else new_hidden

        return fn
