"""reading_apart: how well does a reader fitted on the whole corpus read stories written apart from it?

The k-fold readout of `pooling_and_layers` holds out texts of the corpus, whose paired framings share
scenarios with the training texts. Here every reader is fitted on all corpus texts (as `extract` fits
the run's probe and vectors) and reads the stories of `--stories` (default `heldout/stories/`: one
`<concept>.txt` per concept, stories separated by `---` lines, as in a corpus's `stories/`), written
apart from the corpus and never used to fit anything. Readers: the readout probes (`probe:lda`, the
default, and `probe:logistic`) and the projections on the caa / centered vectors, at each of extract's
default blocks, `mean_after:1` pooling. Top-1 / top-3 over all corpus concepts, per reader and block,
with a story-level bootstrap interval at the best block; per-concept hits and the confusions of the
default reader. `--quick`: a tiny random model, the small test corpus, the test stories of its concepts.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from steerkit.capture import capture, default_spread  # noqa: E402
from steerkit.corpus import load as load_corpus  # noqa: E402
from steerkit.corpus.text import split_stories  # noqa: E402
from steerkit.experiments.steer_eval.analysis import ranks  # noqa: E402
from steerkit.models.zoo import cache_root  # noqa: E402
from steerkit.steering import token_states  # noqa: E402
from steerkit.vectors.extract import DEFAULT_POOLING, membership  # noqa: E402
from steerkit.vectors.methods import METHODS, MethodInputs  # noqa: E402
from steerkit.vectors.probe import fit_readout_probe, story_groups  # noqa: E402

STORIES = common.ROOT / "heldout" / "stories"
READERS = ["probe:lda", "probe:logistic", "caa", "centered"]
DEFAULT_READER = "probe:lda"  # what `steerkit read` uses on a run extracted with the defaults
BOOTSTRAP = 2000
SHORT = {"two sentences": 2, "first sentence": 1}  # story openings read as short texts
RUNNING_AT = (8, 16, 24, 32, 40, 64)  # tokens read so far: the running reading (a streamed text; steer-eval lengths)
SENTENCE_END = re.compile(r"[.!?][\"\u201d\u2019)]?(?=\s|$)")


def load_stories(folder: Path, names: list[str]) -> tuple[list[str], list[int], list[str]]:
    """(texts, label index into names, concepts of the folder that the corpus lacks) from
    folder/<concept>.txt files split on `---` lines; empty stories are dropped."""
    if not folder.is_dir():
        raise SystemExit(f"--stories: {folder} is not a folder of <concept>.txt files")
    texts, labels, unknown = [], [], []
    for f in sorted(folder.glob("*.txt")):
        if f.stem not in names:
            unknown.append(f.stem)
            continue
        for _, story in split_stories(f.read_text(encoding="utf-8")):
            if story:
                texts.append(story)
                labels.append(names.index(f.stem))
    if not texts:
        raise SystemExit(f"--stories: no stories in {folder} for the corpus's concepts ({', '.join(names[:5])}...)")
    return texts, labels, unknown


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) bool: the true concept among the k highest scores of each row of scores (n, C); ties
    count against it: steer-eval's rank, so a reading hit here is a steering success there."""
    return torch.from_numpy(ranks(scores.numpy(), labels.numpy()) <= k)


def bootstrap_ci(hits: np.ndarray, groups: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean hit rate, resampling concepts (the stories of a concept
    share its writing) with replacement."""
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    per = [hits[groups == g] for g in ids]
    means = []
    for _ in range(n):
        pick = rng.integers(0, len(ids), len(ids))
        means.append(float(np.concatenate([per[i] for i in pick]).mean()))
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def fit_reader(name: str, x: MethodInputs, groups: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reader `name` fitted on all corpus rows x: a function (n, H) -> (n, C) scores."""
    if name.startswith("probe:"):
        return fit_readout_probe(x.a, x.pos, groups, name.split(":")[1], calibrate=False).log_probs
    unit, centre = METHODS[name].fn(x)[0], x.a.mean(0)  # (C, H) unit rows; extract's centre
    return lambda h: (h - centre) @ unit.T  # projections


def token_readings(
    h: torch.Tensor, read: Callable[[torch.Tensor], torch.Tensor], label: int, skip: int, at: tuple[int, ...]
) -> dict[str, float]:
    """How one text reads token by token. h (T, H): every token's state at the reader's block; the
    first `skip` tokens are left out, as the pooling leaves them out. Returns the share of single
    tokens whose reading has the true concept `label` first (token_top1) / in the top 3 (token_top3),
    and for each t in `at` (at most the tokens there are) whether the running reading, the reader
    applied to the mean of the first t states (what pooling the text so far gives), has it first
    (run{t}_top1) / in the top 3 (run{t}_top3)."""
    hs = h[skip:] if h.shape[0] > skip else h[-1:]
    lab = torch.full((hs.shape[0],), label)
    s = read(hs)  # (T - skip, C): one reading per token
    out = {"token_top1": float(topk_hits(s, lab, 1).double().mean()),
           "token_top3": float(topk_hits(s, lab, 3).double().mean())}  # fmt: skip
    running = torch.cumsum(hs.double(), 0) / torch.arange(1, hs.shape[0] + 1, dtype=torch.float64).unsqueeze(1)
    for t in at:
        if t <= hs.shape[0]:
            s = read(running[t - 1 : t].float())
            out[f"run{t}_top1"] = float(topk_hits(s, lab[:1], 1)[0])
            out[f"run{t}_top3"] = float(topk_hits(s, lab[:1], 3)[0])
    return out


def first_sentences(text: str, k: int) -> str:
    """The first k sentences of text (ends: . ! ? and a closing quote or bracket, then space or end)."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[: ends[k - 1]] if len(ends) >= k else text


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--stories", default=str(STORIES), help="folder of <concept>.txt test stories")
    args = ap.parse_args()
    common.seed_all()
    out = common.out_dir("reading_apart", args)
    clock = common.Clock()
    corpus = load_corpus(common.corpus_for(args))
    names = corpus.names
    tests, labels_list, unknown = load_stories(Path(args.stories), names)
    lm = common.model_for(args)
    n_blocks = lm.adapter.n_blocks(lm.model)
    layers = default_spread(n_blocks) if not args.quick else [1, n_blocks - 1]
    texts = [t.text for t in corpus.texts]
    neutral = [t.text for t in corpus.neutral]
    pos, neg, scenario = membership(corpus)
    groups = story_groups(texts, scenario)
    cache = None if args.quick else cache_root() / "activations"
    short = [first_sentences(t, k) for k in SHORT.values() for t in tests]
    res = capture(lm, texts + neutral + tests + short, layers, pooling=DEFAULT_POOLING, cache_dir=cache)
    n, n_neu = len(texts), len(neutral)
    labels = torch.tensor(labels_list)
    results: dict = {"model": lm.info.get("spec"), "stories": _shown(Path(args.stories)), "n_stories": len(tests),
                     "n_concepts": len(names), "n_story_concepts": len(set(labels_list)), "unknown_concepts": unknown,
                     "n_corpus_texts": n, "layers": layers, "pooling": DEFAULT_POOLING.name, "readers": {}}  # fmt: skip
    scores_at: dict = {}
    read_at: dict = {}
    for reader in READERS:
        row = {}
        for layer in layers:
            acts = res.resid[layer]
            x = MethodInputs(acts[:n], pos, neg, scenario, acts[n : n + n_neu])
            read = fit_reader(reader, x, groups)
            read_at[reader, layer] = read
            at = n + n_neu
            s = read(acts[at : at + len(tests)])
            scores_at[reader, layer] = s
            for i, kind in enumerate(SHORT, start=1):
                scores_at[reader, layer, kind] = read(acts[at + i * len(tests) : at + (i + 1) * len(tests)])
            row[str(layer)] = {"top1": round(float(topk_hits(s, labels, 1).double().mean()), 4),
                               "top3": round(float(topk_hits(s, labels, 3).double().mean()), 4)}  # fmt: skip
        results["readers"][reader] = row
        print(
            f"{reader:>15}: " + " ".join(f"{la}:{v['top1']:.2f}/{v['top3']:.2f}" for la, v in row.items()), flush=True
        )
    lab = labels.numpy()
    best = {}
    for reader, row in results["readers"].items():
        la, v = max(row.items(), key=lambda kv: (kv[1]["top3"], kv[1]["top1"]))
        s = scores_at[reader, int(la)]
        best[reader] = {"layer": int(la), **v,
                        "top1_ci": bootstrap_ci(topk_hits(s, labels, 1).numpy().astype(float), lab),
                        "top3_ci": bootstrap_ci(topk_hits(s, labels, 3).numpy().astype(float), lab)}  # fmt: skip
    results["best"] = best
    results["short"] = {  # the same readers at their best block, on the stories' openings
        reader: {kind: {f"top{k}": round(float(topk_hits(scores_at[reader, v["layer"], kind], labels, k).double().mean()), 4)
                        for k in (1, 3)} for kind in SHORT}
        for reader, v in best.items()
    }  # fmt: skip
    d = best[DEFAULT_READER]
    s = scores_at[DEFAULT_READER, d["layer"]]
    pred = s.argmax(1)
    hit1, hit3 = topk_hits(s, labels, 1), topk_hits(s, labels, 3)
    results["per_concept"] = {names[c]: {"n": int((labels == c).sum()), "top1": float(hit1[labels == c].double().mean()),
                                         "top3": float(hit3[labels == c].double().mean())}
                              for c in sorted(set(labels_list))}  # fmt: skip
    per_story = [token_readings(token_states(lm, t, d["layer"])[1], read_at[DEFAULT_READER, d["layer"]], int(c),
                                DEFAULT_POOLING.skip, RUNNING_AT) for t, c in zip(tests, labels_list, strict=True)]  # fmt: skip
    results["tokens"] = {"reader": DEFAULT_READER, "layer": d["layer"], "skip": DEFAULT_POOLING.skip,
                         **{k: {"mean": round(float(np.mean(v)), 4), "n": len(v)}
                            for k in dict.fromkeys(k for r in per_story for k in r)
                            for v in [[r[k] for r in per_story if k in r]]}}  # fmt: skip
    results["confusions"] = [{"concept": names[int(t)], "read_as": names[int(p)], "story": tests[i][:80]}
                             for i, (t, p) in enumerate(zip(labels, pred, strict=True)) if t != p]  # fmt: skip
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    _figure(results, out)
    common.write_results(out, results, _report(results))


def _shown(folder: Path) -> str:
    """The story folder as the report shows it: relative to the repository when inside it."""
    f = folder.resolve()
    return f.relative_to(common.ROOT).as_posix() if f.is_relative_to(common.ROOT) else str(f)


def _figure(results: dict, out: Path) -> None:
    with common.figure(out / "reading_apart.png", (11, 4.5)) as fig:
        ax1, ax3 = fig.subplots(1, 2, sharey=True)
        for ax, k in ((ax1, "top1"), (ax3, "top3")):
            for m, r in results["readers"].items():
                ax.plot([int(la) for la in r], [v[k] for v in r.values()], marker="o", label=m)
            chance = min(1.0, (1 if k == "top1" else 3) / results["n_concepts"])
            ax.axhline(chance, color="grey", ls=":", label="chance")
            ax.set(title=f"stories apart from the corpus: {k}", xlabel="block")
        ax1.set(ylabel="share of stories")
        ax1.legend()


def _tokens_line(tk: dict, d: dict) -> str:
    """The token-by-token reading of the default reader, as a sentence."""
    runs = [f"{t} tokens {tk[f'run{t}_top1']['mean']:.0%} / {tk[f'run{t}_top3']['mean']:.0%}"
            + (f" (n {tk[f'run{t}_top1']['n']})" if tk[f"run{t}_top1"]["n"] != tk["token_top1"]["n"] else "")
            for t in RUNNING_AT if f"run{t}_top1" in tk]  # fmt: skip
    return (f"Token by token ({tk['reader']} at block {tk['layer']}, what `read`'s trace and the server's per-token "
            f"readouts show): a single token's state reads as the story's concept {tk['token_top1']['mean']:.0%} top-1 / "
            f"{tk['token_top3']['mean']:.0%} top-3 of tokens. The running reading (the reader on the mean of the "
            f"tokens so far, skipping the first {tk['skip']}) reaches " + ", ".join(runs)
            + f"; the whole story reads {d['top1']:.0%} / {d['top3']:.0%}.")  # fmt: skip


def _report(results: dict) -> str:
    b = results["best"]
    d = b[DEFAULT_READER]
    rows = [[results["model"], m, v["layer"], v["top1"], f"[{v['top1_ci'][0]:.2f}, {v['top1_ci'][1]:.2f}]", v["top3"],
             f"[{v['top3_ci'][0]:.2f}, {v['top3_ci'][1]:.2f}]"] for m, v in b.items()]  # fmt: skip
    layer_rows = [[results["model"], m, *[f"{v['top1']:.2f} / {v['top3']:.2f}" for v in r.values()]]
                  for m, r in results["readers"].items()]  # fmt: skip
    per = results["per_concept"]
    weak = sorted(per, key=lambda c: (per[c]["top3"], per[c]["top1"]))[:8]
    conf: dict[str, int] = {}
    for c in results["confusions"]:
        key = f"{c['concept']} -> {c['read_as']}"
        conf[key] = conf.get(key, 0) + 1
    skipped = results["unknown_concepts"]
    return "\n".join([
        "# reading_apart",
        "",
        f"Question: how well does a reader fitted on the whole corpus read stories written apart from it? Model "
        f"{results['model']}; {results['n_stories']} stories of {results['n_story_concepts']} concepts from "
        f"`{results['stories']}/`, never used to fit anything, read among all {results['n_concepts']} "
        f"corpus concepts ({results['pooling']} pooling, readers fitted on the {results['n_corpus_texts']} corpus "
        f"texts; chance {1 / results['n_concepts']:.1%} / {min(1.0, 3 / results['n_concepts']):.1%}). Intervals: "
        f"95% bootstrap over concepts. Runtime {results['seconds']:.0f} s.",
        "",
        f"**Headline:** the default reader ({DEFAULT_READER}) reads {d['top1']:.0%} top-1 / {d['top3']:.0%} top-3 "
        f"at block {d['layer']}; "
        + ", ".join(f"{m} {v['top1']:.0%} / {v['top3']:.0%} (block {v['layer']})" for m, v in b.items() if m != DEFAULT_READER)
        + ".",
        "",
        "Best block per reader:",
        "",
        common.table(rows, ["model", "reader", "block", "top-1", "95% CI", "top-3", "95% CI"]),
        "",
        "The same readers at the same blocks on the stories' openings (top-1 / top-3; whole story for comparison):",
        "",
        common.table([[results["model"], m, v["layer"], f"{v['top1']:.2f} / {v['top3']:.2f}",
                       *[f"{results['short'][m][kind]['top1']:.2f} / {results['short'][m][kind]['top3']:.2f}" for kind in SHORT]]
                      for m, v in b.items()], ["model", "reader", "block", "whole story", *SHORT]),
        "",
        "Every block (top-1 / top-3):",
        "",
        common.table(layer_rows, ["model", "reader", *[str(la) for la in results["layers"]]]),
        "",
        _tokens_line(results["tokens"], d),
        "",
        f"Weakest concepts for {DEFAULT_READER} at block {d['layer']} (top-1 / top-3 over their stories): "
        + ", ".join(f"{c} {per[c]['top1']:.0%} / {per[c]['top3']:.0%}" for c in weak) + ".",
        "",
        "Its misreadings (true -> read as): "
        + (", ".join(f"{k}" + (f" x{v}" if v > 1 else "") for k, v in sorted(conf.items(), key=lambda kv: -kv[1]))
           or "none") + ".",
        "",
        f"Concepts in the story folder but not in the corpus (not read): {', '.join(skipped) or 'none'}.",
        "",
        "Figure: reading_apart.png (top-1 and top-3 per block and reader).",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
