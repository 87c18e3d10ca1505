"""The rules of the house, read from the code itself (every import statement, those inside functions too).

(a) a stage's code folders in the stage table are the folders of the modules it imports (tasks/<package>,
    or a top folder) — so a stage's cache cannot miss its own code; the failure names the folders to declare;
(b) no import cycle anywhere;
(c) arrows point down: chatpipe → flows → tasks → model → kernels; serve uses tasks and model; inside tasks,
    a stage package imports only earlier ones along the diagram, and common/ and chat/ import no stage;
(d) dvc.yaml is what the stage table gives;
(e) the README's tree is the real tree;
(f) the DAG is the table's: edges come from inputs and outputs, every input but the user's data is written
    upstream, a switch is a param its stage reads, and the flow's diagram shows every stage and switch.
"""
from __future__ import annotations

import ast
import re
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest

from chatpipe.dvc import render
from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.pipeline import PIPELINE, SCHEMA, UPSTREAM, upstream

FOLDERS = ("chatpipe", "flows", "tasks", "model", "kernels", "serve")  # all imported as chatpipe.<folder>
CLI = ("chatpipe.cli", "chatpipe.dvc")
STAGE_PACKAGES = tuple(f"chatpipe.tasks.{p}" for p in ("ingest", "tokens", "train", "evals", "publish"))  # diagram order
TABLE = "chatpipe.tasks.pipeline"  # the stage table: read by the drivers, run by no stage


def folder_path(name: str) -> Path:
    """chatpipe.<folder>.rest lives at <root>/<folder>/rest; chatpipe.cli at <root>/chatpipe/cli."""
    parts = name.split(".")[1:]
    return PROJECT_ROOT.joinpath(*(parts if parts and parts[0] in FOLDERS[1:] else ["chatpipe", *parts]))


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "chatpipe" else ("chatpipe", *parts))


def module_file(name: str) -> Path | None:
    base = folder_path(name)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            out[module_name(path)] = path
    return out


@cache
def imports(name: str) -> frozenset[str]:
    """The project modules `name` imports, anywhere in its body."""
    found, path = set(), modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            found |= {f"{source}.{a.name}" if module_file(f"{source}.{a.name}") else source for a in node.names}
    return frozenset(m for m in found if m in modules())


def with_parents(name: str) -> set[str]:
    """A module and the packages Python runs first to import it (`a.b.c` → a, a.b, a.b.c)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in (with_parents(todo.pop()) & modules().keys()) - seen:
            seen.add(module)
            todo += imports(module)
    return seen - {TABLE, "chatpipe"}  # the package root only maps the folders (chatpipe/__init__.py)


# ---------------------------------------------------------------- (a) code deps

def code_folders(modules_: set[str]) -> set[str]:
    """What a stage table entry names for these modules: tasks/<package>, else the top folder — but only the model's
    schema files (SCHEMA) when those are all the stage takes from model/ (loading params imports them)."""
    parts = [modules()[m].relative_to(PROJECT_ROOT).parts for m in modules_]
    model = {"/".join(p) for p in parts if p[0] == "model"}
    folders = {"/".join(p[:2]) if p[0] == "tasks" else p[0] for p in parts if p[0] != "model"}
    return folders | (model if model <= set(SCHEMA) else {"model"} if model else set())


@pytest.mark.parametrize("name", PIPELINE)
def test_declared_code_is_what_the_stage_imports(name):
    """Declared, not computed when the table loads: the closures parse ~100 files, 0.5–0.9 s here, against the
    table's import of 11–20 ms that every `chatpipe` command and worker pays."""
    stage, needed = PIPELINE[name], code_folders(closure(PIPELINE[name].run.partition(":")[0]))
    assert set(stage.code) == needed, f"{name}: declare code={tuple(sorted(needed))}, not {stage.code}"


def test_the_check_sees_what_a_stage_needs():
    """The pilot's closure reaches the training step's folder and the model and kernels below it, not ingest."""
    needed = code_folders(closure("chatpipe.tasks.train.loop"))
    assert {"tasks/train", "model", "kernels"} <= needed and "tasks/ingest" not in needed


# ---------------------------------------------------------------- (b) cycles

def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over explicit imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in imports(v):
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
            if len(component) > 1 or v in imports(v):
                found.append(sorted(component))

    for module in modules():
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    assert cycles() == []


# ---------------------------------------------------------------- (c) arrows

def violations(importer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} → {t}" for m in modules() if m == importer or m.startswith(importer + ".")
                  for t in imports(m) if any(t == f or t.startswith(f + ".") for f in forbidden))


def test_layers_point_down():
    tasks, flows, model, kernels, serve = (f"chatpipe.{f}" for f in ("tasks", "flows", "model", "kernels", "serve"))
    assert violations(model, (tasks, flows, serve, *CLI)) == []
    assert violations(kernels, (model, tasks, flows, serve, *CLI)) == []
    assert violations(tasks, (flows, serve, *CLI)) == []
    assert violations(flows, (serve, *CLI)) == []
    assert violations(serve, (flows, *CLI)) == []


def test_shared_packages_import_no_stage():
    assert violations("chatpipe.tasks.common", STAGE_PACKAGES) == []
    # chat imports nothing but itself, and the errors a user can cause (tasks/common/errors.py imports nothing)
    assert [v for v in violations("chatpipe.tasks.chat", ("chatpipe.tasks.common", *STAGE_PACKAGES))
            if not v.endswith(" → chatpipe.tasks.common.errors")] == []


def test_stages_import_only_upstream():
    for i, package in enumerate(STAGE_PACKAGES):
        assert violations(package, STAGE_PACKAGES[i + 1:]) == [], f"{package} imports a later stage"


# ---------------------------------------------------------------- (d) dvc.yaml

def test_dvc_yaml_is_generated_from_the_stage_table():
    assert (PROJECT_ROOT / "dvc.yaml").read_text() == render(), "dvc.yaml is stale: run `chatpipe dvc-yaml`"


# ---------------------------------------------------------------- (e) the README's tree

def readme_tree() -> set[str]:
    """The paths the README's architecture tree lists (two spaces of indent per level)."""
    text = (PROJECT_ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    paths, parents = set(), []
    for line in block.splitlines():
        depth, name = (len(line) - len(line.lstrip(" "))) // 2, line.split()[0]
        parents = parents[:depth] + [name.rstrip("/")]
        paths.add("/".join(parents))
    return paths


def test_readme_tree_is_the_real_tree():
    listed = readme_tree()
    assert sorted(p for p in listed if not (PROJECT_ROOT / p).exists()) == []
    code = {str(p.relative_to(PROJECT_ROOT)) for folder in FOLDERS
            for p in (PROJECT_ROOT / folder).rglob("*") if p.suffix in (".py", ".comp") and p.name != "__init__.py"}
    assert sorted(code - listed) == []


# ---------------------------------------------------------------- (f) the DAG

USERS = ("data/chat_combined.txt",)  # inputs no stage writes: the user's data


def test_the_dag_comes_from_inputs_and_outputs():
    assert UPSTREAM["ingest"] == () and UPSTREAM["gate"] == ("pilot",)
    assert UPSTREAM["publish"] == ("tokenizer", "shard", "pilot", "full", "sft", "distill", "eval")  # manifest.json too
    edited = {**PIPELINE, "full": replace(PIPELINE["full"], inputs=PIPELINE["full"].inputs[1:])}  # no metrics/gate.json
    assert upstream(edited.values())["full"] == ("tokenizer", "shard", "pilot")
    misplaced = {**PIPELINE, "eval": replace(PIPELINE["eval"], inputs=("dist",))}  # what publish writes after it
    with pytest.raises(ValueError, match="eval reads what publish writes, at or after it"):
        upstream(misplaced.values())


def test_every_input_is_written_upstream_or_is_the_users():
    """A typo in an input would drop an edge without a word: every input is some stage's output, or the user's."""
    written = [path for s in PIPELINE.values() for path in s.writes]
    unwritten = {i for s in PIPELINE.values() for i in s.inputs
                 if not any(i == w or i.startswith(w + "/") for w in written)}
    assert unwritten == set(USERS) and all((PROJECT_ROOT / u).exists() for u in USERS)


def test_a_switched_off_stage_leaves_its_consumers_what_they_read():
    """Without sft, distill, eval and publish still take the full run (teacher = sft or full); without pack, sft
    is off too. A switch is a param its stage reads, so turning it changes the stage's cache key."""
    switches = {s.name: s.enabled for s in PIPELINE.values() if s.enabled}
    assert switches == {"pack": "sft.enabled", "sft": "sft.enabled", "distill": "distill.enabled"}
    assert all("full" in UPSTREAM[s] for s in ("distill", "eval", "publish"))
    for name, key in switches.items():
        assert any(key == p or key.startswith(p + ".") for p in PIPELINE[name].params), name


def test_the_flow_diagram_shows_every_stage_and_switch():
    doc = ast.get_docstring(ast.parse((PROJECT_ROOT / "flows" / "chat_pipeline.py").read_text()))
    boxes = re.findall(r"(\[?)(\w+)\]?", "\n".join(line for line in doc.splitlines() if "──" in line))
    assert sorted(name for _, name in boxes) == sorted(PIPELINE)
    assert {name for bracket, name in boxes if bracket} == {s.name for s in PIPELINE.values() if s.enabled}
