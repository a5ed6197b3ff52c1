"""Zero-shot evaluation through lm-eval: offline tasks built from the held-out test articles, and
one `simple_evaluate` call per model for those and/or lm-eval's own (hub) tasks.

Local tasks (templates in cast/resources/tasks/*.yaml, data written next to the filled-in copies):
  cast_mc        HellaSwag-style: a few sentences of a test article and the start of the next one;
                 choices = its true next words vs the endings of items from OTHER test articles of
                 similar length (acc, acc_norm, acc_mutual_info; see mc_items).
  cast_lastword  LAMBADA-style: a passage without its last word, target " word" (acc = greedy match).
  cast_ppl       loglikelihood_rolling over whole test articles (word/byte perplexity, bits per byte).
  cast_zs        the group of the three (acc averaged over cast_mc and cast_lastword).

Light imports at module level (Snakemake parses the workflow with this module importable); lm-eval,
transformers and torch are imported inside run_zeroshot.
"""
from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

from .config import PACKAGE_DIR
from .errors import ConfigError
from .tracking import sanitize

TEMPLATE_DIR = PACKAGE_DIR / "resources" / "tasks"
PLACEHOLDER = "@DATA_DIR@"
LOCAL_GROUP = "cast_zs"
LOCAL_TASKS = ("cast_mc", "cast_lastword", "cast_ppl")
TASK_SETS = {
    "local": [LOCAL_GROUP],
    # CAST paper / re-implementation (paper.md): plain acc, 0-shot
    "cast7": ["hellaswag", "race", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"],
    # AST / Wanda protocol
    "ast7": ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"],
}

_SENT_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]{2,}")


# ---------------------------------------------------------------- task names
def resolve_task_names(spec: str | list[str]) -> list[str]:
    """Config `zeroshot.tasks` -> lm-eval names: a set name ('local', 'cast7', 'ast7') or a list whose
    items are task/group names or set names. Order kept, duplicates dropped."""
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        for name in TASK_SETS.get(item, [item]):
            if name not in out:
                out.append(name)
    if not out:
        raise ConfigError("config key 'zeroshot.tasks': empty task list")
    return out


def needs_local(names: list[str]) -> bool:
    """Whether any name is one of the generated tasks (then the `tasks` stage output is needed)."""
    return any(n == LOCAL_GROUP or n.startswith("cast_") for n in names)


def _builtin_names_scan() -> set[str]:
    """task/group/tag names declared in lm-eval's bundled task YAML files: a 1 s text scan instead of
    TaskManager's 6 s index (which confirms any name this scan misses before we reject it)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return set()
    names, line = set(), re.compile(r"^(?:task|group|tag):[ \t]*(.*)$", re.M)
    for path in (Path(spec.origin).parent / "tasks").rglob("*.yaml"):
        for value in line.findall(path.read_text(errors="replace")):
            names.update(v.strip(" '\"") for v in value.strip("[] ").split(",") if v.strip(" '\""))
    return names


def check_task_names(spec) -> list[str]:
    """Config-time check of `zeroshot.tasks`: every name is a set name, one of the generated local
    tasks, or a task/group/tag lm-eval knows. Raises ConfigError naming the key, with close matches."""
    names = resolve_task_names(spec)
    local = {LOCAL_GROUP, *LOCAL_TASKS}
    bad_local = [n for n in names if needs_local([n]) and n not in local]
    if bad_local:
        import difflib

        hint = "; ".join(f"{t!r}: did you mean {', '.join(h)}?" for t in bad_local
                         if (h := difflib.get_close_matches(t, sorted(local), n=2)))
        raise ConfigError(f"config key 'zeroshot.tasks': unknown local task(s) {', '.join(map(repr, bad_local))}; "
                          f"the generated ones are {', '.join(sorted(local))}; set names: {', '.join(TASK_SETS)}"
                          + (f". {hint}" if hint else ""))
    other = [n for n in names if not needs_local([n])]
    if other and not set(other) <= _builtin_names_scan():
        tm = _index(None, True)  # the real index, so a name the scan misses is never rejected wrongly
        missing = [t for t in other if t not in tm.all_tasks]
        if missing:
            raise _unknown(missing, None, [], tm.all_tasks)
    return names


# ---------------------------------------------------------------- task data
def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences of an article, paragraph by paragraph (a crude splitter: ., ! or ? then a capital)."""
    out = []
    for para in text.split("\n"):
        for s in _SENT_END.split(para.strip()):
            s = s.strip()
            if len(s.split()) >= min_words:
                out.append(s)
    return out


def _round_robin(per_doc: list[list], n: int, rng: random.Random) -> list:
    """Up to n candidates, taken from the documents in turn (each shuffled) so long articles do not
    dominate; the document order is shuffled too."""
    queues = [rng.sample(c, len(c)) for c in per_doc if c]
    rng.shuffle(queues)
    out = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def mc_items(docs: list[str], n: int, n_choices: int = 4, n_context: int = 3, seed: int = 0,
             ending_words: tuple[int, int] = (2, 6), min_words: int = 8) -> list[dict]:
    """HellaSwag-style completion: context = n_context sentences of an article and the start of the
    next sentence (cut after a random word); choices = the true next 2-6 words (ending_words) and
    the true endings of (n_choices - 1) other items from OTHER articles, grouped by closest
    character length; label = index of the true one.

    Items come in groups of n_choices that share one choice set (each item shuffles it), so every
    distractor is a real ending and a scorer that ignores the context (unigram statistics, length,
    a "more fluent" ending) picks the same ending for every item of a group: exactly one of
    n_choices right, i.e. chance. Only the context (the junction with the sentence start, the
    article's topic) lifts the accuracy above it; acc_mutual_info (log p(ending | context) -
    log p(ending)) shows it first in small models, whose plain acc stays near chance.
    Returns n rounded down to a multiple of n_choices items."""
    n_groups = n // n_choices
    if len(docs) < n_choices:
        raise ValueError(f"zero-shot multiple choice with {n_choices} choices needs at least {n_choices} test documents "
                         f"(distractors come from other articles), got {len(docs)}")
    rng = random.Random(seed)
    lo, hi = ending_words
    sents = [split_sentences(d) for d in docs]
    cands = [[(di, i) for i in range(n_context, len(ss)) if len(ss[i].split(" ")) >= max(min_words, hi + 2)]
             for di, ss in enumerate(sents)]
    picked = []
    for di, i in _round_robin(cands, 2 * n_groups * n_choices, rng):
        words = sents[di][i].split(" ")
        k = rng.randint(lo, hi)
        cut = rng.randint(2, len(words) - k)
        ctx = " ".join(sents[di][i - n_context:i] + [" ".join(words[:cut])])
        picked.append((di, ctx, " ".join(words[cut:cut + k])))
    picked.sort(key=lambda c: len(c[2]))
    groups, open_groups = [], []
    for item in picked:  # by ending length: each open group takes at most one item per article
        g = next((g for g in open_groups if all(o[0] != item[0] and o[2] != item[2] for o in g)), None)
        if g is None:
            g = []
            open_groups.append(g)
        g.append(item)
        if len(g) == n_choices:
            open_groups.remove(g)
            groups.append(g)
    groups = rng.sample(groups, min(n_groups, len(groups)))
    items = []
    for g in groups:
        for di, ctx, ending in g:
            choices = rng.sample([o[2] for o in g], n_choices)
            items.append({"context": ctx, "choices": choices, "label": choices.index(ending), "doc": di})
    return items


def lastword_items(docs: list[str], n: int, n_context: int = 3, seed: int = 0) -> list[dict]:
    """LAMBADA-style items: a passage of n_context + 1 sentences whose last sentence ends in
    '<word>.'; context = the passage without ' <word>.', target = the word. As in LAMBADA the target
    should be guessable from the passage: items whose word occurs earlier in the passage come first."""
    rng = random.Random(seed + 1)
    seen, unseen = [], []
    for di, doc in enumerate(docs):
        ss = split_sentences(doc)
        a, b = [], []
        for i in range(n_context, len(ss)):
            body = ss[i]
            if not body.endswith(".") or " " not in body:
                continue
            head, word = body[:-1].rsplit(" ", 1)
            if not _WORD.fullmatch(word):
                continue
            context = " ".join(ss[i - n_context:i] + [head])
            item = {"context": context, "target": word, "doc": di,
                    "in_context": bool(re.search(rf"\b{re.escape(word)}\b", context))}
            (a if item["in_context"] else b).append(item)
        seen.append(a)
        unseen.append(b)
    out = _round_robin(seen, n, rng)
    return out + _round_robin(unseen, n - len(out), rng)


def ppl_items(docs: list[str], n: int | None = None) -> list[dict]:
    return [{"text": d, "doc": i} for i, d in enumerate(docs[:n] if n else docs)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_task(name: str, rows: list[dict] | None, out_dir: str | Path, final_dir: str | Path | None = None) -> Path:
    """One local task (or group, rows=None): its JSONL rows and its YAML template with the data
    folder filled in (final_dir, default out_dir, made absolute)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        _write_jsonl(out_dir / f"{name}.jsonl", rows)
    text = (TEMPLATE_DIR / f"{name}.yaml").read_text()
    path = out_dir / f"{name}.yaml"
    path.write_text(text.replace(PLACEHOLDER, str(Path(final_dir or out_dir).resolve())))
    return path


def build_tasks(test_docs: list[str], out_dir: str | Path, seed: int, n_mc: int = 200, n_lastword: int = 200,
                n_ppl: int | None = None, n_choices: int = 4, n_context: int = 3,
                final_dir: str | Path | None = None) -> dict:
    """Write the offline lm-eval tasks (JSONL data + YAML from workflow/tasks/*.yaml) into out_dir.
    The YAML files point at final_dir (default out_dir) by absolute path: pass the final folder
    when out_dir is a temporary one renamed afterwards."""
    docs = [d for d in test_docs if d and d.strip()]
    if not docs:
        raise ValueError("zero-shot tasks: the test split holds no documents")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = Path(final_dir or out_dir).resolve()
    data = {"cast_mc": mc_items(docs, n_mc, n_choices, n_context, seed),
            "cast_lastword": lastword_items(docs, n_lastword, n_context, seed),
            "cast_ppl": ppl_items(docs, n_ppl)}
    for name, rows in data.items():
        if not rows:
            raise ValueError(f"zero-shot task {name}: no items could be built from {len(docs)} test documents")
        write_task(name, rows, out_dir, final)
    write_task(LOCAL_GROUP, None, out_dir, final)
    return {"tasks_dir": str(final), "items": {k: len(v) for k, v in data.items()}, "test_documents": len(docs),
            "lastword_in_context": sum(r["in_context"] for r in data["cast_lastword"]),
            "n_choices": n_choices, "n_context": n_context, "seed": seed}


# ---------------------------------------------------------------- running lm-eval
def _index(include_path, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)


def task_manager_for(tasks: list[str], include_path: str | Path | None):
    """(TaskManager, include_defaults) knowing every requested name, built BEFORE any model loads.
    Local names only -> include_path alone (indexing lm-eval's 14k built-in tasks costs ~6 s);
    otherwise the built-in registry too. Unknown names raise ConfigError saying where we looked;
    unknown cast_* names are not looked up in the built-in registry (they are generated here)."""
    if include_path is None and needs_local(tasks):
        raise ConfigError(f"config key 'zeroshot.tasks': {', '.join(t for t in tasks if needs_local([t]))}: the local "
                          "tasks are built by the `tasks` stage; pass its folder (cast evaluate --tasks-dir, include_path)")
    local_names: list[str] = []
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ConfigError(f"zero-shot tasks folder not found: {include_path} (run the `tasks` stage)")
        tm = _index(include_path, False)
        local_names = tm.all_tasks
        missing = [t for t in tasks if t not in local_names]
        if not missing:
            return tm, False
        if all(needs_local([t]) for t in missing):
            raise _unknown(missing, include_path, local_names, None)
    tm = _index(include_path, True)
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        raise _unknown(missing, include_path, local_names, tm.all_tasks)
    return tm, True


def _unknown(missing: list[str], include_path, local_names: list[str], builtin: list[str] | None) -> ConfigError:
    import difflib

    where = [f"include path {include_path} (holds: {', '.join(local_names) or 'nothing'})" if include_path
             else "no include path (the local cast_* tasks need the `tasks` stage folder, --tasks-dir)"]
    where.append(f"lm-eval {_lm_eval_version()} built-in registry ({len(builtin)} names)" if builtin is not None
                 else "not lm-eval's built-in registry (cast_* names are generated by the `tasks` stage)")
    known = builtin if builtin is not None else local_names
    hints = {t: difflib.get_close_matches(t, known, n=3) for t in missing}
    hint = "; ".join(f"{t!r}: did you mean {', '.join(h)}?" for t, h in hints.items() if h)
    return ConfigError(f"config key 'zeroshot.tasks': unknown task(s) {', '.join(map(repr, missing))}; looked in "
                       f"{'; '.join(where)}; set names: {', '.join(TASK_SETS)}" + (f". {hint}" if hint else ""))


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def metric_key(task: str, key: str) -> str | None:
    """lm-eval result key 'acc,none' of task t -> MLflow name 'zs/t/acc' (other filters keep a
    suffix: 'acc,strict' -> 'zs/t/acc_strict'); its standard error 'acc_stderr,none' ->
    'zs/t/acc_stderr' (the tables print acc ± stderr); bookkeeping keys (no filter) -> None."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    return sanitize(f"zs/{task}/{metric}" if filt == "none" else f"zs/{task}/{metric}_{filt}")


def flatten_metrics(results: dict) -> dict[str, float]:
    out = {}
    for section in ("results", "groups"):
        for task, vals in results.get(section, {}).items():
            for k, v in vals.items():
                name = metric_key(task, k)
                if name is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[name] = float(v)
    return out


def mean_stderrs(results: dict) -> dict[str, float]:
    """'zs/<task>/<metric>_stderr' of every mean-aggregated task metric: lm-eval's closed form
    (lm_eval.api.metrics.mean_stderr, sample sd / sqrt(n)) over its logged samples, i.e. what lm-eval
    reports as '<metric>_stderr' -- which it skips with bootstrap_iters=0, the setting that also
    spares us its bootstraps (a process pool and 100k draws per perplexity metric). Groups: none."""
    from lm_eval.api.metrics import mean_stderr

    out = {}
    for task, samples in results.get("samples", {}).items():
        listed = results.get("configs", {}).get(task, {}).get("metric_list", [])
        for metric in (m["metric"] for m in listed if m.get("aggregation") == "mean"):
            vals = [float(s[metric]) for s in samples if s.get("filter", "none") == "none"
                    and isinstance(s.get(metric), (int, float)) and not isinstance(s.get(metric), bool)]
            if len(vals) > 1:
                out[sanitize(f"zs/{task}/{metric}_stderr")] = float(mean_stderr(vals))
    return out


def token_perplexity(samples: list[dict], tokenizer) -> dict:
    """Token-level perplexity of rolling-loglikelihood samples: exp(-sum ll / sum n_tokens), n_tokens
    = the document's token count (what HFLM scores: every token, the first one conditioned on the
    BOS/EOS prefix token). Comparable with cast.evaluate.perplexity, which is also per token."""
    ll = sum(_ll(s) for s in samples)
    n = sum(len(tokenizer.encode(s["doc"]["text"], add_special_tokens=False)) for s in samples)
    return {"token_perplexity": math.exp(-ll / n), "loglikelihood": ll, "tokens": n}


def _ll(sample: dict) -> float:
    r = sample["filtered_resps"]
    return float(r[0] if isinstance(r, (list, tuple)) else r)


def set_averages(metrics: dict) -> dict:
    """{"zs/<set>_avg/acc": mean accuracy} for each published task set (cast7, ast7) whose tasks all
    have a plain `acc` in metrics: the papers' "average over 7 tasks" column."""
    out = {}
    for name, tasks in TASK_SETS.items():
        accs = [metrics.get(f"zs/{t}/acc") for t in tasks]
        if name != "local" and all(a is not None for a in accs):
            out[f"zs/{name}_avg/acc"] = sum(accs) / len(accs)
    return out


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def run_zeroshot(model_dir: str | Path, tasks: list[str], include_path: str | Path | None, batch_size: int = 16,
                 device: str = "cpu", limit: int | None = None, seed: int = 0, tokenizer: str | None = None,
                 trust_remote_code: bool = False, task_manager=None) -> dict:
    """0-shot lm-eval of a saved model directory in float32; task names are checked before the model
    loads. tokenizer: a tokenizer folder for model dirs without one. Returns {"metrics":
    {"zs/<task>/<metric>": value, "zs/<task>/<metric>_stderr": its standard error (mean metrics)},
    "versions", "lm_eval_version", "config" (per-task configs), "n_samples", "include_defaults"}; when cast_ppl ran also "zs/cast_ppl/token_perplexity" and
    "ppl_docs" (per-document loglikelihood sums). task_manager: the (TaskManager, include_defaults)
    pair task_manager_for returned, reused instead of indexing again."""
    import logging

    import lm_eval

    tm, defaults = task_manager or task_manager_for(tasks, include_path)
    model_args = {"pretrained": str(model_dir), "dtype": "float32"}
    if tokenizer:
        model_args["tokenizer"] = str(tokenizer)
    if trust_remote_code:
        model_args["trust_remote_code"] = True
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)  # one warning per left-truncated request otherwise
    try:
        res = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=list(tasks), task_manager=tm, device=str(device),
            batch_size=batch_size, limit=limit, num_fewshot=0, bootstrap_iters=0, log_samples=True,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        log.setLevel(level)
    metrics = flatten_metrics(res)
    metrics.update(mean_stderrs(res))
    metrics.update(set_averages(metrics))
    out = {"metrics": metrics, "versions": _jsonable(res.get("versions", {})), "lm_eval_version": _lm_eval_version(),
           "config": _jsonable(res.get("configs", {})), "n_samples": _jsonable(res.get("n-samples", {})),
           "include_defaults": defaults}
    samples = res.get("samples", {}).get("cast_ppl")
    if samples:
        from transformers import AutoTokenizer

        tp = token_perplexity(samples, AutoTokenizer.from_pretrained(str(tokenizer or model_dir)))
        metrics["zs/cast_ppl/token_perplexity"] = tp["token_perplexity"]
        out["ppl_docs"] = {"loglikelihood": tp["loglikelihood"], "tokens": tp["tokens"],
                           "per_doc": [_ll(s) for s in samples]}
    return out
