"""
The three layers and which way their imports point, read from the source (every import, at the top of a module or
inside a function): the model layer imports only itself, the data layer (`dataset_builder/`) the model and itself, the
application anything; no module outside the command line imports it, and no two modules import each other in a ring.
"""

import ast
import os

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("chartwiz_hf", "dataset_builder")

MODEL = {
    "chartwiz_hf",
    "chartwiz_hf.chat_templates",
    "chartwiz_hf.checkpoints",
    "chartwiz_hf.compose",
    "chartwiz_hf.configuration_chartwiz",
    "chartwiz_hf.convert_chartwiz_llava_to_hf",
    "chartwiz_hf.errors",
    "chartwiz_hf.extras",
    "chartwiz_hf.files",
    "chartwiz_hf.fingerprints",
    "chartwiz_hf.image_processing_chartwiz",
    "chartwiz_hf.images",
    "chartwiz_hf.modeling_chartwiz",
    "chartwiz_hf.names",
    "chartwiz_hf.processing_chartwiz",
    "chartwiz_hf.tiny",
}
COMMAND_LINE = ("chartwiz_hf.cli", "chartwiz_hf.commands", "dataset_builder.cli")
LAYER_ORDER = {"model": 0, "data": 1, "application": 2}


def layer(module: str) -> str:
    if module in MODEL:
        return "model"
    if module.split(".")[0] == "dataset_builder":
        return "data"
    return "application"


def is_command_line(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in COMMAND_LINE)


def project_modules() -> dict[str, str]:
    """module name -> file, for both packages."""
    modules = {}
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: str, modules: dict) -> set[str]:
    """The project modules that `module` imports anywhere in its file."""
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module
            # `from package import module` names a module; `from module import name` names the module itself.
            candidates = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
            candidates = candidates or [target]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:  # `import a.b.c` where only `a.b` is ours
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != module:
                found.add(candidate)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = project_modules()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def test_the_walk_sees_the_imports_it_checks(graph):
    # The reader itself, on imports known to be there: relative, absolute, `from package import module`, lazy.
    assert "chartwiz_hf.modeling_chartwiz" in graph["chartwiz_hf"]
    assert "chartwiz_hf.configuration_chartwiz" in graph["chartwiz_hf.modeling_chartwiz"]
    assert {"chartwiz_hf.commands.ask", "dataset_builder.cli"} <= graph["chartwiz_hf.cli"]
    assert "chartwiz_hf.names" in graph["dataset_builder.rows"]
    assert "dataset_builder.synth" in graph["dataset_builder.cli"]  # imported inside a function
    assert set(graph) >= MODEL, "every model module named here exists"


def test_imports_point_down_the_layers(graph):
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph.items()
        for target in targets
        if LAYER_ORDER[layer(target)] > LAYER_ORDER[layer(module)]
    ]
    assert upward == []


def test_only_the_command_line_imports_the_command_line(graph):
    library_to_cli = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if is_command_line(target) and not is_command_line(module)
    ]
    assert library_to_cli == []


def test_no_import_cycles(graph):
    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


# The files that travel inside a checkpoint and load with `trust_remote_code=True` without this package: they keep
# their own copies of the names they share with `chartwiz_hf.names`. (The converter does not travel: it imports
# compose, files and checkpoints.)
REMOTE_CODE = {
    "chartwiz_hf.configuration_chartwiz",
    "chartwiz_hf.image_processing_chartwiz",
    "chartwiz_hf.modeling_chartwiz",
    "chartwiz_hf.processing_chartwiz",
}


def top_level_definitions(path: str) -> set[str]:
    """The names a module binds at its top level by assignment, `def` or `class` (not by import); dunders aside."""
    names = set()
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name))
    return {name for name in names if not (name.startswith("__") and name.endswith("__"))}


def test_the_names_of_names_py_are_defined_there_only():
    modules = project_modules()
    shared = top_level_definitions(modules["chartwiz_hf.names"])
    assert {"IMAGE_TOKEN", "INSTRUCTIONS", "normalize_text"} <= shared, "the reader sees names.py's definitions"
    redefined = [
        f"{module} defines {name}"
        for module, path in sorted(modules.items())
        if module != "chartwiz_hf.names" and module not in REMOTE_CODE
        for name in sorted(top_level_definitions(path) & shared)
    ]
    assert redefined == []


def test_the_tiny_tokenizers_are_trained_by_tiny_py_only():
    trainer = "Bpe" + "Trainer"  # spelt so that this file does not hold it
    holders = sorted(
        os.path.relpath(os.path.join(directory, name), ROOT)
        for folder in (*PACKAGES, "benchmarks", "examples", "recipes", "tests", "tests_vllm")
        for directory, _, files in os.walk(os.path.join(ROOT, folder))
        for name in files
        if name.endswith(".py") and trainer in open(os.path.join(directory, name), encoding="utf-8").read()
    )
    assert holders == [os.path.join("chartwiz_hf", "tiny.py")]

    from chartwiz_hf.errors import ChartWizValueError
    from chartwiz_hf.tiny import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(["차트 값 1 2 3"] * 4, 300, ["<|endoftext|>"], eos_token="<|endoftext|>")
    assert tokenizer.decode(tokenizer("그래프 𝛼")["input_ids"]) == "그래프 𝛼", "any text, through the bytes"
    with pytest.raises(ChartWizValueError, match="at least 258 .the 256 bytes and 2 special tokens"):
        train_byte_level_bpe(["x"], 257, ["<a>", "<b>"])
