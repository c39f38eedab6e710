"""The layers, and no import cycles, over the project's import graph, read twice: by core/imports.py
(every ``import`` in the source, lazy ones included, read with ``ast``: the graph the cache keys use)
and by grimp (pinned in requirements-dev.txt). A module may import its own layer and the layers below it:

    pipeline.py     the DAG and the command's entry point
    cli/            the verbs, the Olive importer
    engines/        compile, submit and follow on KFP, Argo, AzureML; the local and docker runners
    stages/         each stage's recipe, and the stage registry (data)
    runtime/        engine work inside a stage process: KFP executor output, Key Vault, MLflow,
                    promotion and model registries
    core/           schema and loading, artifacts, hashing, cache keys, models, the stage spec

A stage imports no other stage.
"""

from __future__ import annotations

from pathlib import Path

from helpers import ROOT

from core.imports import direct_imports, project_modules

LAYERS = ("pipeline", "cli", "engines", "stages", "runtime", "core")
# The stages a stage is built from, and so may import: the multi-task stages run onnx_build's
# builder and evaluate's generators, gate files and page helpers (their code hashes include them).
BUILDS_ON = {"adapter_build": ("onnx_build",), "evaluate_tasks": ("evaluate",)}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = project_modules(LAYERS, root)
    return {m: set(direct_imports(m, root)[0]) for m in mods}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(g.items()):
        for t in sorted(targets):
            if layer(t) < layer(m):
                out.append(f"{m} imports {t}, a higher layer")
            parts, tparts = m.split("."), t.split(".")
            if parts[0] == tparts[0] == "stages" and len(parts) > 2 and len(tparts) > 1:
                if tparts[1] not in (parts[1], "registry", *BUILDS_ON.get(parts[1], ())):
                    out.append(f"{m} imports {t}, another stage")
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    top |= {p.stem for p in ROOT.glob("*.py")}
    assert top == set(LAYERS), f"top-level modules outside the layers: {sorted(top - set(LAYERS))}"


def test_no_upward_import_and_no_cycle():
    g = graph()
    assert len(g) > 50 and sum(map(len, g.values())) > 150  # the whole project was read
    assert upward(g) == []
    assert cycles(g) == []


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    files = {
        "core/__init__.py": "",
        "core/a.py": "def f():\n    from core import b  # lazy imports count\n",
        "core/b.py": "from .a import f\n",
        "cli/__init__.py": "",
        "cli/verbs.py": "",
        "stages/__init__.py": "",
        "stages/x/__init__.py": "",
        "stages/x/run.py": "import cli.verbs\nfrom stages.y import run\n",
        "stages/y/__init__.py": "",
        "stages/y/run.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    g = graph(tmp_path)
    assert upward(g) == [
        "stages.x.run imports cli, a higher layer",  # importing cli.verbs runs cli/__init__.py first
        "stages.x.run imports cli.verbs, a higher layer",
        "stages.x.run imports stages.y, another stage",
        "stages.x.run imports stages.y.run, another stage",
    ]
    assert cycles(g) == [["core.a", "core.b"]]


def test_grimp_agrees_no_upward_import_no_cycle_no_stage_importing_another():
    """The same contract read by grimp, an import-graph tool of its own (pinned in
    requirements-dev.txt), over the packages (pipeline.py, the top layer, is the ast check's)."""
    import grimp

    g = grimp.build_graph(*LAYERS[1:], include_external_packages=False)
    assert len(g.modules) > 50
    assert g.find_illegal_dependencies_for_layers(layers=LAYERS[1:]) == set()
    stage_packages = sorted(m for m in g.find_children("stages") if g.find_children(m))
    assert len(stage_packages) >= 5
    # the stages others build on sit below them: within each layer no stage imports another
    built_on = {f"stages.{b}" for bs in BUILDS_ON.values() for b in bs}
    builders = grimp.Layer(*(m for m in stage_packages if m not in built_on), independent=True)
    bases = grimp.Layer(*sorted(built_on), independent=True)
    assert g.find_illegal_dependencies_for_layers(layers=[builders, bases]) == set()
    loops = [
        (a, b)
        for a in sorted(g.modules)
        for b in sorted(g.find_modules_directly_imported_by(a))
        if g.chain_exists(importer=b, imported=a)
    ]
    assert loops == [], f"import cycles through: {loops[:5]}"
