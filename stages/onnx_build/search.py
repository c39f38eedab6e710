"""The INT4 recipe search (issue 18): ``pipeline.py tune-int4``, and onnx_build with
``onnx.search.enabled``.

A point is a builder recipe (``Recipe``: the pinned builder's own option values) plus an
execution setting (intra-op threads). Each is built with the onnxruntime-genai model builder and
scored as the evaluate stage scores (its generators, greedy decoding, label parser): accuracy and
macro-F1 on the eval split at ``batch_size``, throughput there, p50/p95 latency at batch 1, size.
PyTorch (the merged model of the same run) is scored the same way once.

The search does not walk the grid. It starts from the builder's defaults and the current recipe
(``onnx.int4_*``), then tries one-step neighbours: from the fastest point within the accuracy
budget, steps that should be faster (bigger blocks, fewer int8 layers); from infeasible points
that are faster than it, steps that buy accuracy at the same speed (k_quant, int8 for the most
sensitive layers). A faster step from an infeasible point is pruned (it can only lose more
accuracy), and so is an accuracy step from a point slower than the best (it can only get slower).
It stops when no candidate is left, or at ``max_points`` builds or ``max_minutes``.

Every build and score is cached by content hash (merged model, eval rows, recipe, builder version,
this code), under SLM_CACHE_DIR/int4-search; the wall-time bound counts a cached point at the
seconds it first cost, so a warm re-run replays the same decisions and re-scores nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from core.errors import UserError
from core.hashing import digest, file_hash, tree_hash
from core.io import read_json, read_jsonl
from stages.onnx_build.scoring import eval_rows, score

log = logging.getLogger("slm")

# The builder's own INT4 defaults (builder.py --help, pinned version): RTN ("default"), block 32,
# accuracy level 4 on CPU, symmetric, no mixed precision, full LM head.
BUILDER_DEFAULTS = dict(algo="default", mixed="", block=32, level=4, symmetric=True, prune=False, sensitive=0)
LEGACY_ALGOS = {  # the builder's compound aliases: base method + matmul_mixed_precision
    "k_quant_mixed": ("k_quant", "last_matmul:int8,mixed_layers:int8"),
    "k_quant_last": ("k_quant", "last_matmul:int8"),
    "rtn_last": ("rtn", "last_matmul:int8"),
}


@dataclasses.dataclass(frozen=True, order=True)
class Recipe:
    algo: str
    mixed: str
    block: int
    level: int
    symmetric: bool
    prune: bool
    sensitive: int  # how many of the most sensitive MatMuls get sensitive_precision
    embed: bool = True  # the embedding table quantized (the builder's default for tied embeddings)

    def name(self) -> str:
        parts = [self.algo, f"b{self.block}", f"L{self.level}"]
        parts += [self.mixed.replace(":int8", "").replace(",", "+")] if self.mixed else []
        parts += [f"top{self.sensitive}"] if self.sensitive else []
        parts += [] if self.symmetric else ["asym"]
        parts += [] if self.embed else ["float-embed"]
        parts += ["prune"] if self.prune else []
        return " ".join(parts)


def builder_args(recipe: Recipe, nodes: list[str], sensitive_precision: str, tied: bool = False) -> list[str]:
    """The builder's --extra_options (and --target_options) for a recipe. Per-node overrides go in
    target_options' quant_config, whose override list replaces the legacy one whole, so the
    mixed-precision presets are restated there after the (first-matching) node names. That path
    also drops the Gather the legacy one quantizes for tied embeddings (a float embedding: +113 MB
    on SmolLM2), so ``tied`` restates it."""
    opts = {
        "algo_config": recipe.algo,
        "block_size": str(recipe.block),
        "accuracy_level": str(recipe.level),
        "is_symmetric": str(recipe.symmetric).lower(),
    }
    if recipe.prune:
        opts["prune_lm_head"] = "true"
    args = []
    picked = nodes[: recipe.sensitive]
    if picked or not recipe.embed:
        overrides = [
            {"match": {"name": n}, **({"type": "int8"} if sensitive_precision == "int8" else {"exclude": True})}
            for n in picked
        ]
        overrides += [
            {"match": {"preset": sel}, "type": qtype}
            for sel, _, qtype in (p.partition(":") for p in filter(None, recipe.mixed.split(",")))
        ]
        target = {"quant_config": {"weights": {"overrides": overrides}}}
        if tied and recipe.embed:
            opts["op_types_to_quantize"] = "MatMul/Gather"
        args = ["--target_options", json.dumps(target, sort_keys=True)]
    elif recipe.mixed:
        opts["matmul_mixed_precision"] = recipe.mixed
    return ["--extra_options", *(f"{k}={v}" for k, v in opts.items()), *args]


def speed_order(point: dict) -> tuple:
    """Fastest first; on a tie of the (rounded) p50, the more accurate, then the higher throughput.
    The one order for the chosen point and the front, so the chosen point is always on the front."""
    return (point["latency_ms_p50"], -point["accuracy"], -point["tokens_per_second"])


def project(values: dict, space) -> Recipe:
    """The point of the space nearest to ``values`` (each dimension: its value if listed, else
    the listed one nearest to it)."""

    def near(v, choices):
        if v in choices:
            return v
        if isinstance(v, bool) or not all(isinstance(c, (int, float)) for c in choices):
            return choices[0]
        return min(choices, key=lambda c: (abs(c - v), c))

    return Recipe(
        algo=near(values["algo"], space.algo_configs),
        mixed=near(values["mixed"], space.mixed_precision),
        block=near(values["block"], space.block_sizes),
        level=near(values["level"], space.accuracy_levels),
        symmetric=near(values["symmetric"], space.symmetric),
        prune=near(values["prune"], space.prune_lm_head),
        sensitive=near(values["sensitive"], sorted(space.sensitive_layers)),
        embed=near(values.get("embed", True), space.quantize_embeddings),
    )


def current_recipe(oc) -> dict:
    algo, mixed = LEGACY_ALGOS.get(oc.int4_algo_config, (oc.int4_algo_config, ""))
    return dict(
        algo=algo, mixed=mixed, block=oc.int4_block_size, level=oc.int4_accuracy_level, symmetric=True, prune=False
    ) | {"sensitive": 0}


# Per dimension, the order from faster (or cheaper) to more accurate, as the search walks it.
def _orders(space) -> dict[str, list]:
    mixed = sorted(space.mixed_precision, key=lambda m: (m.count(":int8"), m))
    return {
        "block": sorted(space.block_sizes, reverse=True),  # bigger blocks: faster, less accurate
        "sensitive": sorted(space.sensitive_layers),
        "mixed": mixed,
        "level": sorted(space.accuracy_levels, reverse=True),  # 4 (int8 activations) is the fast one on CPU
        "prune": sorted(space.prune_lm_head, reverse=True),  # pruned: faster, same logits for generation
    }


SAME_SPEED = ("algo", "symmetric", "embed")  # the same kernels, so the same latency: accuracy only


def neighbours(r: Recipe, space, direction: str) -> list[Recipe]:
    """One-step moves: ``faster`` (toward speed) or ``accurate`` (toward accuracy, same-speed moves first)."""
    out = []
    if direction == "accurate":
        # k_quant keeps more accuracy than RTN at the same size and speed (docs/field-notes.md).
        algos = [a for a in ("default", "rtn", "k_quant") if a in space.algo_configs]
        if r.algo in algos and algos.index(r.algo) + 1 < len(algos):
            out.append(dataclasses.replace(r, algo=algos[algos.index(r.algo) + 1]))
        out += [dataclasses.replace(r, symmetric=s) for s in space.symmetric if s != r.symmetric]
        if r.embed and False in space.quantize_embeddings:  # a float embedding: a table lookup, no slower
            out.append(dataclasses.replace(r, embed=False))
    for dim, order in _orders(space).items():
        if dim == "prune" and direction == "accurate":
            continue  # an unpruned LM head gives generation the same logits, slower
        i = order.index(getattr(r, dim))
        j = i - 1 if direction == "faster" else i + 1
        if 0 <= j < len(order):
            out.append(dataclasses.replace(r, **{dim: order[j]}))
    return out


def cache_root() -> Path:
    base = Path(os.environ.get("SLM_CACHE_DIR") or Path.home() / ".cache" / "slm-pipeline")
    return base / "int4-search"


def _threads(threads: int) -> int:
    """The thread count a score runs on (0: the stage's), for its cache key."""
    from core.generators import stage_threads

    return threads or stage_threads()


def code_version() -> str:
    """What a cached score depends on besides its inputs: the scoring code (scoring.py's import
    closure, as a stage's code hash takes its own) and the libraries it runs."""
    from importlib.metadata import version

    from core.hashing import ROOT, pins
    from core.imports import closure, module_file

    modules, packages = closure("stages.onnx_build.scoring", ROOT)
    parts = {module_file(m, ROOT).relative_to(ROOT).as_posix(): file_hash(module_file(m, ROOT)) for m in modules}
    parts["pins"] = pins(packages)
    parts["onnxruntime-genai"] = version("onnxruntime-genai")
    parts["onnxruntime"] = version("onnxruntime")
    return digest(parts)


def builder_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai") + "/" + version("onnxruntime")


def _cached(path: Path, make):
    """``make()``'s JSON result, kept at ``path``: written whole (rename), so a killed run leaves none."""
    if path.is_file():
        return json.loads(path.read_text()), True
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return value, False


# --------------------------------------------------------------------------------- scoring


def sensitivity(model: Path, calib: list[str], block: int) -> list[list]:
    """Per builder MatMul node: how much int4 hurts its output on real activations. One forward
    pass over a calibration slice records each Linear's input X; the score is the relative output
    error ||X(W - Q(W))ᵀ||² / ||XWᵀ||² with Q symmetric RTN int4 at ``block`` (q/k/v summed: one
    fused node). One pass, not one per layer (a per-layer logit KL took ~150 forwards, minutes
    on 2 cores). ``[[node, score], ...]``, most sensitive first."""
    import torch

    from core.models import load_model, load_tokenizer

    tok = load_tokenizer(str(model))
    tok.padding_side = "left"
    net = load_model(str(model), dtype="float32", device="cpu").eval()
    batch = tok(calib, return_tensors="pt", padding=True, add_special_tokens=False)
    keep = batch["attention_mask"].bool()

    def fake_quant(w):
        rows, cols = w.shape
        pad = (-cols) % block
        x = torch.nn.functional.pad(w, (0, pad)).reshape(rows, -1, block)
        scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 7
        return (torch.clamp(torch.round(x / scale), -8, 7) * scale).reshape(rows, -1)[:, :cols]

    errors: dict[str, list[float]] = {}

    def hook(node):
        def record(mod, args, _out):
            x = args[0][keep] if args[0].dim() == 3 else args[0]  # real tokens only, not padding
            ref = x @ mod.weight.T
            err = x @ (mod.weight - fake_quant(mod.weight)).T
            totals = errors.setdefault(node, [0.0, 0.0])
            totals[0] += float(err.pow(2).sum())
            totals[1] += float(ref.pow(2).sum())

        return record

    handles = [
        mod.register_forward_hook(hook(onnx_node(name)))
        for name, mod in net.named_modules()
        if isinstance(mod, torch.nn.Linear) and onnx_node(name)
    ]
    with torch.no_grad():
        net(**batch)
    for h in handles:
        h.remove()
    out = [[node, round(e / max(r, 1e-12), 8)] for node, (e, r) in errors.items()]
    return sorted(out, key=lambda x: (-x[1], x[0]))


def onnx_node(module: str) -> str | None:
    """The builder's MatMul node name for a Hugging Face Linear (q/k/v are fused into qkv_proj)."""
    if module.endswith("lm_head"):
        return "/lm_head/MatMul"
    parts = module.split(".")
    if "layers" not in parts:
        return None
    i = parts[parts.index("layers") + 1]
    leaf = parts[-1]
    if leaf in ("q_proj", "k_proj", "v_proj", "qkv_proj"):
        return f"/model/layers.{i}/attn/qkv_proj/MatMul"
    if leaf in ("o_proj", "dense"):
        return f"/model/layers.{i}/attn/o_proj/MatMul"
    if leaf in ("gate_proj", "up_proj", "down_proj", "gate_up_proj"):
        return f"/model/layers.{i}/mlp/{leaf}/MatMul"
    return None


def graph_matmuls(onnx_dir: Path) -> set[str]:
    """The quantized MatMul names in a built graph, as the builder's options name them."""
    import onnx

    graph = onnx.load(str(next(Path(onnx_dir).glob("*.onnx"))), load_external_data=False).graph
    return {n.name.rsplit("_Q", 1)[0] for n in graph.node if n.op_type in ("MatMulNBits", "MatMul")}


# --------------------------------------------------------------------------------- the search


class BuildFailed(Exception):
    def __init__(self, failure: dict):
        super().__init__(failure["error"])
        self.failure = failure


class Search:
    def __init__(self, cfg, model: Path, dataset: Path, work: Path | None = None):
        self.cfg, self.sc = cfg, cfg.onnx.search
        self.model, self.dataset = Path(model), Path(dataset)
        self.started = time.perf_counter()
        self.spent = 0.0  # seconds the points cost when first made (cached ones included): the budget's clock
        self.built = 0
        self.made = {"builds": 0, "scores": 0}  # what this run made rather than found in the cache
        self.prompts, self.truth, self.labels = eval_rows(self.dataset, self.sc.max_samples)
        self.model_hash = tree_hash(self.model)
        self.rows_hash = digest([self.prompts, self.truth, self.labels])
        self.code = code_version()
        self.root = Path(work) if work else cache_root() / self.model_hash[:16]
        self.points: dict[tuple, dict] = {}
        self._nodes = None
        self._charged: set[Path] = set()
        self.failed: dict[Recipe, dict] = {}
        config = read_json(self.model / "config.json", "merged model")
        self.tied = bool(config.get("tie_word_embeddings", False))
        if not self.tied:  # an untied embedding is float already (the builder quantizes MatMuls only)
            self.sc = self.sc.model_copy(update={"quantize_embeddings": [True]})

    # -- cached pieces --------------------------------------------------------------

    def key(self, **parts) -> str:
        return digest({"model": self.model_hash, "code": self.code, "ep": self.cfg.onnx.execution_provider, **parts})

    def pytorch(self) -> dict:
        def make():
            from core.generators import TorchGenerator
            from core.models import device_for

            start = time.perf_counter()
            gen = TorchGenerator(self.model, device_for(self.cfg.runtime), self.sc.max_new_tokens)
            out = score(gen, self.prompts, self.truth, self.labels, self.sc.batch_size, self.sc.latency_samples)
            import torch

            out |= {"threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1)}
            out["size_bytes"] = sum(p.stat().st_size for p in self.model.rglob("*") if p.is_file())
            return out

        k = self.key(what="pytorch", rows=self.rows_hash, s=self._score_settings(), threads=_threads(0))
        value, _ = _cached(self.root / "pytorch" / f"{k[:24]}.json", make)
        self.spent += value["seconds"]
        return value

    def sensitive_nodes(self) -> list[str]:
        if self._nodes is None:
            train = read_jsonl(self.dataset / "train.jsonl")[: self.sc.calibration_samples]
            calib = [r["prompt"] for r in train] or self.prompts[: self.sc.calibration_samples]
            block = min(self.sc.block_sizes)
            k = self.key(what="sensitivity", calib=calib, block=block)
            where = self.root / "sensitivity" / f"{k[:24]}.json"

            def make():
                start = time.perf_counter()
                return {"scores": sensitivity(self.model, calib, block), "seconds": time.perf_counter() - start}

            found, _ = _cached(where, make)
            self.spent += found["seconds"]
            self._nodes = [n for n, _ in found["scores"]]
            self.sensitivity = found["scores"]
        return self._nodes

    def _score_settings(self) -> dict:
        sc = self.sc
        return dict(b=sc.batch_size, n=sc.max_new_tokens, lat=sc.latency_samples, max=sc.max_samples)

    def build(self, recipe: Recipe) -> tuple[Path, dict]:
        """The recipe's built model folder (cached) and its record (options, seconds, bytes)."""
        import sys

        from stages.onnx_build.build import build_checked

        nodes = self.sensitive_nodes() if recipe.sensitive else []
        args = builder_args(recipe, nodes, self.sc.sensitive_precision, tied=self.tied)
        k = self.key(what="build", args=args, code=builder_version())  # a build depends on the builder, not on us
        folder = self.root / "builds" / k[:24]
        record_file, failed_file = folder / "record.json", folder.with_suffix(".failed.json")
        if record_file.is_file():
            return folder / "model", json.loads(record_file.read_text())
        if failed_file.is_file():  # this builder cannot build this recipe: known, not retried
            raise BuildFailed(json.loads(failed_file.read_text()))
        if shutil.disk_usage(self._mk(self.root)).free < 2 << 30:
            raise UserError(f"less than 2 GB free under {self.root}: free space for the INT4 search's builds")
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=self._mk(self.root / "builds")))
        try:
            ep = self.cfg.onnx.execution_provider
            try:
                build_checked(
                    self.model,
                    tmp / "model",
                    lambda cache: [
                        sys.executable,
                        *("-m onnxruntime_genai.models.builder -i".split()),
                        str(self.model),
                        *("-o", str(tmp / "model"), "-p", "int4", "-e", ep, "-c", str(cache)),
                        *args,
                    ],
                )
            except UserError as e:  # e.g. a block size the builder's quantizer cannot split a layer by
                if "was killed" in str(e):  # out of memory: this machine's limit, not the recipe's
                    raise
                failure = {"recipe": dataclasses.asdict(recipe), "args": args, "error": str(e)[:500]}
                failure["build_seconds"] = round(time.perf_counter() - start, 1)
                failed_file.write_text(json.dumps(failure, indent=1))
                raise BuildFailed(failure) from None
            info = {"precision": "int4", "execution_provider": ep, "options": args}
            (tmp / "model" / "build_info.json").write_text(json.dumps(info, indent=1))
            record = {
                "recipe": dataclasses.asdict(recipe),
                "args": args,
                "build_seconds": round(time.perf_counter() - start, 1),
                "size_bytes": sum(p.stat().st_size for p in (tmp / "model").iterdir() if p.name != "build.log"),
            }
            (tmp / "record.json").write_text(json.dumps(record, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.made["builds"] += 1
        return folder / "model", record

    @staticmethod
    def _mk(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def evaluate(self, recipe: Recipe, threads: int) -> dict:
        """Build (cached) and score (cached) one point; its cost counts toward the budget."""
        if (recipe, threads) in self.points:
            return self.points[(recipe, threads)]
        try:
            folder, record = self.build(recipe)
        except BuildFailed as e:
            if recipe not in self.failed:
                self.failed[recipe] = e.failure
                self.spent += e.failure["build_seconds"]
                log.info("int4 search: %-40s the builder failed: %s", recipe.name(), e.failure["error"][:200])
            return None

        def make():
            from core.generators import OnnxGenerator

            start = time.perf_counter()
            gen = OnnxGenerator(folder, self.sc.max_new_tokens, threads=threads or None)
            out = score(gen, self.prompts, self.truth, self.labels, self.sc.batch_size, self.sc.latency_samples)
            self.made["scores"] += 1
            return out | {"score_seconds": round(time.perf_counter() - start, 1)}

        k = self.key(
            what="score", build=record["args"], rows=self.rows_hash, s=self._score_settings(), t=_threads(threads)
        )
        result, cached = _cached(folder.parent / f"score-{k[:24]}.json", make)
        # A cached point costs what it first cost: the same budget gives a warm re-run the same walk.
        self.spent += result["score_seconds"] + (record["build_seconds"] if folder not in self._charged else 0.0)
        self._charged.add(folder)
        ref = self.reference
        point = {
            "name": recipe.name() + (f" t{threads}" if threads else ""),
            "recipe": dataclasses.asdict(recipe),
            "threads": threads,
            "builder_args": record["args"],
            "size_bytes": record["size_bytes"],
            "build_seconds": record["build_seconds"],
            **{k: v for k, v in result.items() if k != "predicted"},
            "accuracy_drop": round(ref["accuracy"] - result["accuracy"], 4),
            "agreement": round(sum(a == b for a, b in zip(ref["predicted"], result["predicted"])) / len(self.truth), 4),
            "latency_ratio": round(result["latency_ms_p50"] / max(ref["latency_ms_p50"], 1e-9), 3),
            "throughput_ratio": round(result["tokens_per_second"] / max(ref["tokens_per_second"], 1e-9), 3),
            "cached": cached,
            "folder": str(folder),
        }
        point["feasible"] = point["accuracy_drop"] <= self.sc.max_accuracy_drop + 1e-9
        self.points[(recipe, threads)] = point
        log.info(
            "int4 search: %-40s accuracy %.3f (drop %+.3f), p50 %.0f ms (%.2fx PyTorch), %.0f tok/s (%.2fx)%s",
            point["name"],
            point["accuracy"],
            point["accuracy_drop"],
            point["latency_ms_p50"],
            point["latency_ratio"],
            point["tokens_per_second"],
            point["throughput_ratio"],
            " [cached]" if cached else "",
        )
        return point

    def over_budget(self) -> bool:
        avg = self.spent / max(len(self.points), 1)
        builds = len({r for r, _ in self.points} | set(self.failed))
        return self.spent + avg > self.sc.max_minutes * 60 or builds >= self.sc.max_points

    # -- the walk ------------------------------------------------------------------

    def run(self) -> dict:
        sc = self.sc
        self.reference = self.pytorch()
        log.info(
            "int4 search: PyTorch accuracy %.3f, p50 %.0f ms, %.0f tok/s (%d eval rows)",
            self.reference["accuracy"],
            self.reference["latency_ms_p50"],
            self.reference["tokens_per_second"],
            len(self.truth),
        )
        t0 = sc.threads[0]
        seeds = []
        for values in (BUILDER_DEFAULTS, current_recipe(self.cfg.onnx)):
            r = project(values, sc)
            if r not in seeds:
                seeds.append(r)
        stop = "no candidate left"
        for r in seeds:
            self.evaluate(r, t0)
        tried = set(seeds)
        while True:
            if self.over_budget():
                stop = "budget (onnx.search.max_minutes or max_points)"
                break
            cand = self.candidates(t0, tried)
            if not cand:
                break
            tried.add(cand[0])
            self.evaluate(cand[0], t0)
        # Execution settings: the other thread counts, on the chosen recipe only (same build, same accuracy).
        chosen = self.best() or max(self.points.values(), key=lambda p: (p["accuracy"], -p["latency_ms_p50"]))
        for t in sc.threads[1:]:
            self.evaluate(Recipe(**chosen["recipe"]), t)
        return self.result(stop)

    def best(self, threads=None) -> dict | None:
        feasible = [p for p in self.points.values() if p["feasible"] and (threads is None or p["threads"] == threads)]
        return min(feasible, key=speed_order, default=None)

    def candidates(self, threads: int, tried: set) -> list[Recipe]:
        """Untried one-step neighbours worth a build, most promising first (see the module doc)."""
        mine = {r: p for (r, t), p in self.points.items() if t == threads}
        best = self.best(threads)
        out: list[tuple[tuple, Recipe]] = []
        for r, p in mine.items():
            if best is None:
                # Nothing feasible yet: buy accuracy, from the most accurate points first.
                out += [((0, -p["accuracy"], i), n) for i, n in enumerate(neighbours(r, self.sc, "accurate"))]
                continue
            if p is best:
                out += [((1, p["latency_ms_p50"], i), n) for i, n in enumerate(neighbours(r, self.sc, "faster"))]
            elif not p["feasible"] and p["latency_ms_p50"] < best["latency_ms_p50"]:
                # Faster than the best but over budget: same-speed accuracy moves first.
                for i, n in enumerate(neighbours(r, self.sc, "accurate")):
                    same = all(
                        getattr(n, f.name) == getattr(r, f.name)
                        for f in dataclasses.fields(r)
                        if f.name not in SAME_SPEED
                    )
                    out.append(((0 if same else 2, p["latency_ms_p50"], i), n))
            # A feasible point slower than the best, or an infeasible one slower still: pruned.
        seen, ranked = set(), []
        for _, n in sorted(out, key=lambda x: x[0]):
            if n not in tried and n not in seen:
                seen.add(n)
                ranked.append(n)
        return ranked

    def result(self, stop: str) -> dict:
        points = sorted(self.points.values(), key=speed_order)
        front, top = [], -1.0
        for p in points:  # fastest first: a point is on the front if nothing faster is as accurate
            if p["accuracy"] > top:
                front.append(p["name"])
                top = p["accuracy"]
        for p in points:
            p["on_front"] = p["name"] in front
        chosen = self.best()
        fallback = chosen is None
        if fallback:  # nothing in budget: the most accurate point, said so; the quality gate decides
            chosen = max(points, key=lambda p: (p["accuracy"], -p["latency_ms_p50"]))
        ref = {k: v for k, v in self.reference.items() if k != "predicted"}
        return {
            "pytorch": ref,
            "points": points,
            "front": front,
            "chosen": chosen["name"],
            "chosen_in_budget": not fallback,
            "max_accuracy_drop": self.sc.max_accuracy_drop,
            "stopped": stop,
            "builds": len({json.dumps(p["recipe"], sort_keys=True) for p in points}),
            "made": dict(self.made),
            "budget_seconds": round(self.spent, 1),
            "wall_seconds": round(time.perf_counter() - self.started, 1),
            "eval_rows": len(self.truth),
            "sensitivity_top": getattr(self, "sensitivity", [])[:16],
            "failed": [{"name": r.name(), "error": f["error"]} for r, f in self.failed.items()],
        }


def install(result: dict, out: Path) -> dict:
    """Copy the chosen build to ``out``; its thread count goes into genai_config.json (what
    onnxruntime-genai reads at load), so the shipped model runs as it was scored."""
    chosen = next(p for p in result["points"] if p["name"] == result["chosen"])
    src = Path(chosen["folder"])
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    if chosen["threads"]:
        genai = json.loads((out / "genai_config.json").read_text())
        genai["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = chosen["threads"]
        (out / "genai_config.json").write_text(json.dumps(genai, indent=4))
    return chosen


def run_in_stage(cfg, model: Path, dataset: Path | None, onnx_model: Path) -> None:
    """onnx_build with ``onnx.search.enabled``: search, ship the chosen build, record the front."""
    from core.artifacts import write_json

    if cfg.onnx.precision != "int4":
        raise UserError(f"onnx.search searches INT4 recipes; onnx.precision is {cfg.onnx.precision!r}: set it to int4")
    if dataset is None:
        raise UserError("onnx.search.enabled needs the dataset input (--dataset) to score points on")
    result = Search(cfg, model, dataset).run()
    chosen = install(result, onnx_model)
    genai = json.loads((onnx_model / "genai_config.json").read_text())
    write_json(
        onnx_model / "build_info.json",
        {
            "precision": "int4",
            "execution_provider": cfg.onnx.execution_provider,
            "options": chosen["builder_args"],
            "model_type": genai["model"]["type"],
            "bytes": sum(p.stat().st_size for p in onnx_model.iterdir() if p.is_file() and p.name != "build.log"),
            "search": result,
        },
    )
    log.info("int4 search: chose %s (%s); %s", chosen["name"], summary_line(result), result["stopped"])


def summary_line(result: dict) -> str:
    c = next(p for p in result["points"] if p["name"] == result["chosen"])
    return (
        f"accuracy {c['accuracy']:.3f} vs PyTorch {result['pytorch']['accuracy']:.3f}, "
        f"p50 {c['latency_ms_p50']:.0f} ms = {c['latency_ratio']:.2f}x PyTorch, "
        f"throughput {c['throughput_ratio']:.2f}x, {c['size_bytes'] / 1e6:.0f} MB; "
        f"{result['builds']} builds, {len(result['points'])} points, {result['wall_seconds']:.0f} s"
    )


def table(result: dict) -> str:
    """The points as a Markdown table, fastest first (docs and the CLI print it)."""
    ref = result["pytorch"]
    lines = [
        "| point | accuracy | macro-F1 | p50 ms (b1) | p95 ms | tok/s (batch) | MB | front | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| PyTorch fp32 | {ref['accuracy']:.3f} | {ref['macro_f1']:.3f} | {ref['latency_ms_p50']:.0f} | "
        f"{ref['latency_ms_p95']:.0f} | {ref['tokens_per_second']:.1f} | {ref['size_bytes'] / 1e6:.0f} | | |",
    ]
    for p in result["points"]:
        lines.append(
            f"| {p['name']} | {p['accuracy']:.3f} | {p['macro_f1']:.3f} | {p['latency_ms_p50']:.0f} | "
            f"{p['latency_ms_p95']:.0f} | {p['tokens_per_second']:.1f} | {p['size_bytes'] / 1e6:.0f} | "
            f"{'yes' if p['on_front'] else ''} | {'**chosen**' if p['name'] == result['chosen'] else ''} |"
        )
    return "\n".join(lines)


def tune(cfg, run_dir: Path, out: Path | None = None) -> dict:
    """``pipeline.py tune-int4``: the search on a finished run's merged model and dataset."""
    from core.artifacts import write_json

    run_dir = Path(run_dir)
    model, dataset = run_dir / "merge" / "model", run_dir / "data_prep" / "dataset"
    for path, what in ((model, "merged model"), (dataset / "eval.jsonl", "eval split")):
        if not path.exists():
            raise UserError(f"{run_dir} has no {what} ({path}); run `pipeline.py run --out {run_dir}` first")
    result = Search(cfg, model, dataset).run()
    out = Path(out) if out else run_dir / "tune-int4"
    chosen = install(result, out / "model")
    write_json(out / "search.json", result)
    (out / "front.md").write_text(table(result) + "\n")
    return {"result": result, "chosen": chosen, "out": out}
