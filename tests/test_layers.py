"""
The layers and which way their imports point, read from the folders and the source (every import, at the top of a
module or inside a function). A module's layer is its folder:

- `base`: the modules directly in `chartwiz/` (names, errors, files, fingerprints): they import only each other;
- `model`: `chartwiz_hf/`, the model package: it imports only itself and the base;
- `data`: `dataset_builder/`: itself, the base and the model;
- one layer per subpackage of `chartwiz/` (inference, serving, batch, evaluation, ...): the application.

Imports point down: nothing below the application imports it, the application's folders import each other without a
ring (so they stack), no module outside the command line imports it, and no two modules import each other in a ring.
"""

import ast
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("chartwiz", "chartwiz_hf", "dataset_builder")
COMMAND_LINE = ("chartwiz.commands", "dataset_builder.cli")
LOWER_LAYERS = {"base": 0, "model": 1, "data": 2}


def layer(module: str) -> str:
    """`base`, `model`, `data`, or the application folder (`chartwiz.<folder>`) that holds the module."""
    parts = module.split(".")
    if parts[0] == "chartwiz_hf":
        return "model"
    if parts[0] == "dataset_builder":
        return "data"
    folder = os.path.join(ROOT, *parts[:2])
    return f"chartwiz.{parts[1]}" if len(parts) > 1 and os.path.isdir(folder) else "base"


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
    assert {"chartwiz.commands.ask", "dataset_builder.cli"} <= graph["chartwiz.commands.cli"]
    assert "chartwiz.names" in graph["dataset_builder.rows"]
    assert "dataset_builder.synth" in graph["dataset_builder.cli"]  # imported inside a function
    assert {layer(module) for module in graph} >= {"base", "model", "data", "chartwiz.inference", "chartwiz.commands"}


def test_imports_point_down_the_layers(graph):
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph.items()
        for target in targets
        if layer(module) in LOWER_LAYERS
        and LOWER_LAYERS.get(layer(target), len(LOWER_LAYERS)) > LOWER_LAYERS[layer(module)]
    ]
    assert upward == []


def test_the_application_folders_stack_without_a_ring(graph):
    folders = {layer(module) for module in graph} - set(LOWER_LAYERS)
    folder_graph = {
        folder: {layer(target) for module in graph if layer(module) == folder for target in graph[module]}
        & (folders - {folder})
        for folder in folders
    }
    order, placed = [], set()
    while len(placed) < len(folders):
        ready = sorted(folder for folder in folders - placed if folder_graph[folder] <= placed)
        assert ready, f"these application folders import each other in a ring: {sorted(folders - placed)}"
        order += ready
        placed |= set(ready)
    assert order[-1] == "chartwiz.commands", f"the command line sits on top: {order}"


def test_the_base_and_the_data_layer_load_neither_torch_nor_transformers():
    base = sorted(module for module in project_modules() if layer(module) == "base")
    code = (
        f"import sys, dataset_builder, dataset_builder.cli, dataset_builder.synth, {', '.join(base)}; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", f"`{code}` loaded {loaded.stdout.strip()}"


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
# their own copies of the names they share with `chartwiz.names`. (The converter does not travel: it imports
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
    shared = top_level_definitions(modules["chartwiz.names"])
    assert {"IMAGE_TOKEN", "INSTRUCTIONS", "normalize_text"} <= shared, "the reader sees names.py's definitions"
    redefined = [
        f"{module} defines {name}"
        for module, path in sorted(modules.items())
        if module != "chartwiz.names" and module not in REMOTE_CODE
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
    assert holders == [os.path.join("chartwiz", "models", "tiny.py")]

    from chartwiz.errors import ChartWizValueError
    from chartwiz.models.tiny import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(["차트 값 1 2 3"] * 4, 300, ["<|endoftext|>"], eos_token="<|endoftext|>")
    assert tokenizer.decode(tokenizer("그래프 𝛼")["input_ids"]) == "그래프 𝛼", "any text, through the bytes"
    with pytest.raises(ChartWizValueError, match="at least 258 .the 256 bytes and 2 special tokens"):
        train_byte_level_bpe(["x"], 257, ["<a>", "<b>"])


MODEL_FILE_PREFIXES = ("configuration_", "modeling_", "processing_", "image_processing_")


def test_the_remote_code_is_the_model_packages_model_files(tiny_dir):
    # What `save_pretrained` copies beside the weights (and `trust_remote_code=True` loads) is exactly the model
    # package's configuration, modeling, processing and image processing files; its other modules (the converter,
    # compose, the chat templates) stay home.
    model_files = {
        module.rpartition(".")[2] + ".py"
        for module in project_modules()
        if layer(module) == "model" and module.rpartition(".")[2].startswith(MODEL_FILE_PREFIXES)
    }
    carried = {name for name in os.listdir(tiny_dir) if name.endswith(".py")}
    assert carried == model_files == {name.rpartition(".")[2] + ".py" for name in REMOTE_CODE}


def test_the_remote_code_copies_of_shared_names_are_equal():
    import inspect

    from chartwiz import names
    from chartwiz_hf import image_processing_chartwiz, processing_chartwiz

    assert processing_chartwiz.TEXT_NORMAL_FORM == names.TEXT_NORMAL_FORM
    assert image_processing_chartwiz.DEFAULT_FONT_FILENAME == names.FONT_FILENAME
    assert os.path.samefile(image_processing_chartwiz.bundled_font_path(), names.shipped_font_path())
    default = inspect.signature(processing_chartwiz.ChartWizProcessor.__init__).parameters["image_token"].default
    assert default == names.IMAGE_TOKEN


MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_MODULE_REASON = "One module, not several:"


def test_modules_are_short_or_say_why_not():
    # A long module is one job split too late, or a file that must stay whole (a transformers-style modeling file);
    # the second kind says so in its docstring, after LONG_MODULE_REASON.
    unexplained = []
    for module, path in sorted(project_modules().items()):
        source = open(path, encoding="utf-8").read()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES and LONG_MODULE_REASON not in (ast.get_docstring(ast.parse(source)) or ""):
            unexplained.append(f"{module}: {lines} lines")
    assert unexplained == []


def test_application_and_data_functions_fit_on_a_screen():
    # The model package keeps transformers' shapes (a processor's `__call__`, a converter's main), so it is not held
    # to this; the application and the data layer are.
    long_functions = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, path in sorted(project_modules().items())
        if layer(module) != "model"
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long_functions == []
