"""The layout's rules, read off the source: imports run one way, no cycles, a stage per Make target.

The import graph is every ``import`` of a foldstack module anywhere in a file -- at the top, in a
function, under ``TYPE_CHECKING`` -- so a cycle cannot hide inside a function.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY

from foldstack.contracts import folds_file
from foldstack.core.files import write_parquet
from foldstack.core.paths import Paths

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "foldstack"
MAKEFILE = PACKAGE.parents[1] / "Makefile"

#: Top to bottom: a module may import its own folder and the layers below its own, never above,
#: and never a sibling in its own layer (siblings stay independent).
LAYERS = [
    {"cli"},
    {"stages", "pipeline"},
    {"plots"},
    {"training"},
    {"contracts"},
    {"data", "level2", "backbones", "runtime"},
    {"core"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, int, bool]]:
    """Each foldstack module that ``name`` imports: (module, line, inside a function)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    is_package = MODULES[name].name == "__init__.py"
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, name, is_package)
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.append((target if target in MODULES else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(module, line, inside) for module, line, inside in found
            if module == "foldstack" or module.startswith("foldstack.")]


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    parts = parts[:len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def _room(module: str) -> str:
    """The folder (or top-level module) a module lives in: ``foldstack.data.tables`` -> ``data``."""
    return module.split(".")[1] if module.count(".") else ""


def _layer(room: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


GRAPH = {name: _imports(name) for name in MODULES}


def test_every_folder_and_top_level_module_has_a_layer() -> None:
    rooms = {_room(name) for name in MODULES} - {""}
    assert rooms == set().union(*LAYERS)


def test_imports_run_one_way() -> None:
    wrong = []
    for name, imports in GRAPH.items():
        room = _room(name)
        if not room:  # foldstack/__init__.py imports nothing of foldstack's
            assert imports == [], imports
            continue
        for module, line, _ in imports:
            target = _room(module)
            if target != room and (not target or _layer(target) <= _layer(room)):
                wrong.append(f"{MODULES[name].relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "imports against the layers (see ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_no_import_of_foldstack_inside_a_function() -> None:
    hidden = [f"{MODULES[name].relative_to(PACKAGE)}:{line} imports {module}"
              for name, imports in GRAPH.items() for module, line, inside in imports if inside]
    assert not hidden, "imports hidden in functions:\n" + "\n".join(hidden)


def test_no_import_cycle() -> None:
    edges = {name: {module for module, _, _ in imports if module in MODULES and module != name}
             for name, imports in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_rules_catch_what_they_forbid() -> None:
    """The checks above fail on an upward import, a hidden one and a cycle."""
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = {**saved, "foldstack.core.paths": [("foldstack.stages.train", 1, False)]}
        with pytest.raises(AssertionError, match="core/paths.py:1 imports foldstack.stages.train"):
            test_imports_run_one_way()
        GRAPH = {**saved, "foldstack.data.tables": [("foldstack.core.paths", 9, True)]}
        with pytest.raises(AssertionError, match="data/tables.py:9 imports foldstack.core.paths"):
            test_no_import_of_foldstack_inside_a_function()
        GRAPH = {**saved, "foldstack.core.paths": [("foldstack.core.config", 1, False)],
                 "foldstack.core.config": [("foldstack.core.paths", 1, False)]}
        with pytest.raises(pytest.fail.Exception, match="import cycle"):
            test_no_import_cycle()
    finally:
        GRAPH = saved


def test_a_stage_module_per_make_target() -> None:
    """Every stage is found by its Make target's name, and is a ``run`` function."""
    targets = set(re.findall(r"^([a-z]+):", MAKEFILE.read_text(), flags=re.MULTILINE))
    stages = {path.stem for path in (PACKAGE / "stages").glob("*.py") if path.stem != "__init__"}
    assert stages <= targets, f"stage modules without a Make target: {sorted(stages - targets)}"
    for stage in stages:
        tree = ast.parse((PACKAGE / "stages" / f"{stage}.py").read_text())
        assert any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body), stage


def test_module_names_are_distinct_and_shadow_nothing() -> None:
    names = {path.stem for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert not names & set(sys.stdlib_module_names), "modules named like the standard library"
    close = [(a, b) for a, b in combinations(sorted(names), 2) if _one_letter_apart(a, b)]
    assert not close, f"module names one letter apart: {close}"


def _one_letter_apart(a: str, b: str) -> bool:
    """Edit distance 1: one letter added, removed or changed."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


@pytest.mark.parametrize("call", ["matplotlib.use(", "os.umask(", "matplotlib.pyplot", "from matplotlib import pyplot"])
def test_library_code_leaves_process_wide_settings_alone(call: str) -> None:
    """A library must not pick the caller's matplotlib backend (or use pyplot's global figures),
    nor set the umask, which changes it for every thread of the process."""
    found = [str(path.relative_to(PACKAGE)) for path in MODULES.values() if call in path.read_text()]
    assert not found, f"{call} in {found}"


#: The training modules the train stage's process and the pipeline's validation use: Keras-free.
KERAS_FREE = ["foldstack.training.fold_task", "foldstack.training.augment", "foldstack.training.device_forms",
              "foldstack.training.batch_mix"]
BACKENDS = ("keras", "tensorflow", "jax", "torch")


def _backend_imports(name: str) -> list[str]:
    """Each import of a backend, anywhere (also inside a function), in ``name`` and in every
    foldstack module it imports, directly or not."""
    seen, todo, found = set(), [name], []
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        todo.extend(target for target, _, _ in GRAPH[module])
        for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found.extend(f"{MODULES[module].relative_to(PACKAGE)}:{node.lineno} imports {imported}"
                         for imported in names if imported.split(".")[0] in BACKENDS)
    return found


@pytest.mark.parametrize("name", KERAS_FREE)
def test_keras_free_modules_import_no_keras_even_in_a_function(name: str) -> None:
    found = _backend_imports(name)
    assert not found, f"{name} reaches a backend:\n" + "\n".join(found)
    assert _backend_imports("foldstack.training.device_augment")  # the check sees a Keras module's import


def test_the_stage_process_never_imports_keras() -> None:
    """Keras work runs in fold processes: the command line and every stage import no Keras (and
    no TensorFlow, whose start-up lines and memory the stage process must not carry)."""
    code = ("import sys, foldstack.cli; "
            "loaded = [m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


#: Run in a fresh interpreter: the stages named on its command line through the CLI, then
#: which of Keras, TensorFlow and JAX the process holds. Grad-CAM, the one part of the report
#: that needs a model (it runs in a fold process of its own), is replaced by a blank picture.
STAGES_WITHOUT_KERAS = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from foldstack import cli
from foldstack.stages import report

def blank(*args):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(args[-1])
    return args[-1]

report._gradcam = blank
pipeline, root, *stages = sys.argv[1:]
for stage in stages:
    assert cli.main([stage, "--pipeline", pipeline, "--root", root]) == 0, stage
loaded = [name for name in ("keras", "tensorflow", "jax") if name in sys.modules]
assert not loaded, f"imported {loaded}"
"""


def test_folds_stack_submit_and_report_run_without_importing_keras(tiny_digits, tmp_path: Path) -> None:
    cfg, source = tiny_digits
    shutil.copytree(source.root, tmp_path, dirs_exist_ok=True)
    paths = Paths.for_pipeline(cfg.name, tmp_path)
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump({**TINY, "models": [TINY["models"][0]], "stack": {"candidates": ["mean"]}}))
    folds = folds_file.read(paths.folds, cfg.folds.k)
    names = list(folds_file.read_classes(paths.folds, cfg).names)
    rng = np.random.default_rng(0)
    test_ids = pd.read_csv(paths.data / cfg.data.sample_submission, dtype=str)["id"]
    for folder, ids, extra in ((paths.oof, folds["id"], {"fold": folds["fold"]}), (paths.test, test_ids, {})):
        proba = rng.dirichlet(np.ones(len(names)), len(ids))
        write_parquet(folder / "m.parquet", pd.DataFrame(proba, columns=names).assign(id=ids.to_numpy(), **extra))
    subprocess.run([sys.executable, "-c", STAGES_WITHOUT_KERAS, str(pipeline), str(tmp_path),
                    "folds", "stack", "submit", "report"], check=True)
    assert (paths.artifacts / "report.html").is_file() and (paths.submissions / "index.csv").is_file()
