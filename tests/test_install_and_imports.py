"""The house's import rules, read from the source: imports point down the layers, no cycles, one
name per package (trainers/, datasets/ and tools/ are promptdiff.trainers, .datasets and .tools,
never top-level packages), no sys.path edits outside tests; and the installed library predicts and
every tool imports from a folder outside the repository."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_args

REPO = Path(__file__).resolve().parents[1]
# folder -> the package name it is installed as (setup.py's package_dir)
PACKAGES = {
    "promptdiff": "promptdiff",
    "trainers": "promptdiff.trainers",
    "datasets": "promptdiff.datasets",
    "tools": "promptdiff.tools",
}
# lowest first: a module may import its own layer and those below, never one above
LAYERS = [
    ("core", ("promptdiff.diffusion", "promptdiff.backbone", "promptdiff.fileio",
              "promptdiff.imagefiles", "promptdiff.trainer_names", "promptdiff._version",
              "promptdiff.checkout")),
    ("runtime", ("promptdiff.engine", "promptdiff.config_keys", "promptdiff.host",
                 "promptdiff.results")),
    ("worlds", ("promptdiff.worlds",)),
    ("methods", ("promptdiff.trainers", "promptdiff.datasets")),
    ("api", ("promptdiff.predict", "promptdiff")),
    ("tools", ("promptdiff.tools",)),
]  # fmt: skip
# within the core, each part imports only itself (and the file writer, for the weights cache)
CORE_PARTS = {
    "promptdiff.diffusion": ("promptdiff.diffusion",),
    "promptdiff.backbone": ("promptdiff.backbone", "promptdiff.fileio"),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def project_modules() -> dict[str, Path]:
    """Installed module name -> source file, for every module of the four folders."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement in the file names (function-level and
    TYPE_CHECKING imports included: they are dependencies too)."""
    names = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            # a submodule (`from promptdiff.engine import utils`) or a name of `base`: the
            # graph resolves each to the longest module name it starts with
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a name resolves to its longest known
    prefix: `from promptdiff.engine import utils` is an import of promptdiff.engine.utils)."""
    modules = project_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in imported_names(path, module)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific prefix that names the module."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > len(best[1])):
                best = (rank, prefix)
    if best is None:
        raise ValueError(f"{module} is in no layer of tests/test_install_and_imports.py's LAYERS.")
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import of a higher layer, or of another core part."""
    found = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                found.append(f"{module} -> {target}")
            for part, allowed in CORE_PARTS.items():
                if _within(module, part) and not any(_within(target, a) for a in allowed):
                    found.append(f"{module} -> {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---- the rules, on the repository ----------------------------------------------------------------
def test_imports_point_down_the_layers():
    graph = import_graph()
    assert len(graph) > 60 and "promptdiff.trainers.coop" in graph  # the scan sees the house
    assert upward_imports(graph) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {
        "promptdiff.engine.trainer": {"promptdiff.trainers.base"},  # the engine imports a trainer
        "promptdiff.trainers.base": {"promptdiff.trainers.prompted"},
        "promptdiff.trainers.prompted": {"promptdiff.trainers.base"},
        "promptdiff.diffusion.model": {"promptdiff.backbone.encoders"},  # core part to core part
        "promptdiff.backbone.loader": {"promptdiff.fileio"},
    }
    assert upward_imports(graph) == [
        "promptdiff.engine.trainer -> promptdiff.trainers.base",
        "promptdiff.diffusion.model -> promptdiff.backbone.encoders",
    ]
    assert cycles(graph) == [["promptdiff.trainers.base", "promptdiff.trainers.prompted"]]
    with pytest.raises(ValueError, match="somewhere.else is in no layer"):
        layer_of("somewhere.else")


def _python_files():
    skip = {".venv", "build", "dist", "output", "data", ".git"}
    for path in sorted(REPO.rglob("*.py")):
        if not skip & set(path.relative_to(REPO).parts):
            yield path


def test_old_top_level_names_are_imported_nowhere():
    """trainers, datasets and tools are imported by their package names only (importing both would
    register every trainer twice; a top-level datasets would shadow Hugging Face's)."""
    old = {"trainers", "datasets", "tools"}
    # the PromptSRC oracle imports *upstream's* trainers package, in its own process
    oracle = REPO / "tests" / "promptsrc_oracle.py"
    found = []
    for path in _python_files():
        if path == oracle:
            continue
        for name in imported_names(path, "x"):
            if name.split(".")[0] in old:
                found.append(f"{path.relative_to(REPO)}: {name}")
    assert found == []


def test_no_sys_path_edits_outside_tests():
    found = []
    for path in _python_files():
        if path.relative_to(REPO).parts[0] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            text = ast.unparse(node) if isinstance(node, ast.Attribute | ast.Subscript) else ""
            if text.startswith("sys.path.") or text.startswith("sys.path["):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {text}")
    assert found == []


# the Layout block of README.md: an entry's name stands in its first 28 columns, its description after
LAYOUT_NAME = re.compile(r"[\w.]+(?:/|\.py)")


def readme_layout() -> list[tuple[str, str | None, list[str]]]:
    """(path from the repository root, layer named on its line or above it for an entry inside
    promptdiff/, else None, the .py files its description names) per entry of the README's Layout
    block."""
    block = (REPO / "README.md").read_text().split("\n## Layout\n", 1)[1].split("```")[1]
    entries: list[tuple[str, str | None, list[str]]] = []
    layer = None
    for line in block.splitlines():
        head, description = line[:28], line[28:]
        if line.startswith("  ") and head.split() and not LAYOUT_NAME.fullmatch(head.split()[0]):
            layer = head.split()[0]
        for name in LAYOUT_NAME.findall(head):
            inside = line.startswith("  ")
            entries.append(
                ("promptdiff/" + name if inside else name, layer if inside else None, [])
            )
        if entries:
            entries[-1][2].extend(n for n in LAYOUT_NAME.findall(description) if n.endswith(".py"))
    return entries


def test_the_readme_layout_matches_the_tree():
    entries = readme_layout()
    layers = {name for name, _ in LAYERS}
    for path, layer, files in entries:
        assert (REPO / path).exists(), f"README's Layout names {path}, which does not exist"
        for name in files:
            assert (REPO / path / name).is_file(), f"README's Layout names {path}{name}"
        if layer is not None:
            module = "promptdiff." + path.removeprefix("promptdiff/").removesuffix(".py").strip("/")
            assert layer in layers and LAYERS[layer_of(module)][0] == layer, (path, layer)
    named = {path for path, _, _ in entries}
    parts = {
        f"promptdiff/{p.name}/" if p.is_dir() else f"promptdiff/{p.name}"
        for p in (REPO / "promptdiff").iterdir()
        if (p / "__init__.py").is_file() or (p.suffix == ".py" and not p.name.startswith("_"))
    }
    assert parts - named == set(), "parts of promptdiff/ that README's Layout does not name"
    assert {"promptdiff/worlds/", "trainers/", "datasets/", "tools/"} <= named


# ---- the installed library, from a folder outside the repository --------------------------------
def _outside(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run Python code in tmp_path with the environment's installed promptdiff (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("PROMPTDIFF_HOST", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_predict_from_a_temporary_directory(shapes_root, tiny_weights, tmp_path):
    import promptdiff
    from train import cli

    run = tmp_path / "run"
    args = train_args(shapes_root, str(run), "CoOp", "CoOp/vit_b16_ep50_ctxv1", tiny_weights,
                      "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2")  # fmt: skip
    assert cli(["--quiet", *args]) == 0
    images = sorted(str(p) for p in Path(shapes_root).rglob("*.png"))[:3]
    names = ["red circle", "blue square", "a thing"]
    here = promptdiff.load(str(run)).predict(images, names)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = f"""
import json, sys
import promptdiff
probs = promptdiff.load({str(run)!r}).predict({images!r}, {names!r})
import promptdiff.trainers
print(json.dumps({{"probs": probs.tolist(), "top_level": sorted(
    m for m in ("trainers", "datasets", "tools") if m in sys.modules),
    "trainers": promptdiff.trainers.__file__}}))
"""
    found = json.loads(_outside(elsewhere, code).stdout.strip().splitlines()[-1])
    assert len(images) == 3 and here.shape == (3, 3)
    torch.testing.assert_close(torch.tensor(found["probs"]), here.double(), check_dtype=False)
    assert found["top_level"] == []
    assert Path(found["trainers"]) == REPO / "trainers" / "__init__.py"


def test_every_tool_and_the_results_cli_import_from_anywhere(tmp_path):
    tools = sorted(p.stem for p in (REPO / "tools").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {tools!r}:\n"
        "    importlib.import_module('promptdiff.tools.' + name)\n"
        "print(sorted(m for m in ('trainers', 'datasets', 'tools') if m in sys.modules))\n"
    )
    assert _outside(tmp_path, code).stdout.split() == ["[]"]
    assert "benchmark" in tools and "check_dataset" in tools
    help_text = _outside(tmp_path, "from promptdiff.results.__main__ import main; main(['--help'])")
    assert "usage" in help_text.stdout.lower()


def test_a_second_checkouts_promptdiff_refuses_the_installed_trainers(tmp_path):
    """promptdiff imported from a copy of the project while the install points at this checkout:
    importing promptdiff.trainers / datasets / tools stops with one sentence naming both folders
    instead of running the two copies' code together."""
    import shutil
    import subprocess
    import sys

    import promptdiff

    shutil.copytree(os.path.dirname(promptdiff.__file__), tmp_path / "promptdiff")
    for name in ("trainers", "datasets", "tools"):
        proc = subprocess.run(
            [sys.executable, "-c", f"import promptdiff.{name}"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: promptdiff comes from") and "mixed" in last, last
        assert str(tmp_path / "promptdiff") in last
