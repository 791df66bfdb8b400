"""The project uses the public APIs of Lightning, Hydra, submitit, W&B and torch only: any minor release of
them may rename or drop a private name. A ``._name`` read, written or patched on anything but the project's
own objects, or an import from a private module, fails here."""
import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
# names this project once reached into, and must not again
RETIRED = {"_on_before_step", "_on_after_step", "_batches_that_stepped", "_current_fx_name", "_wandb_init",
           "_return_value", "_internal", "_trainer", "_EXECUTOR"}


def sources() -> list[Path]:
    return [path for path in ROOT.rglob("*.py") if not {".venv", "outputs", "multirun"} & set(path.parts)]


def own_private_names(trees) -> set[str]:
    """Private names the project defines itself: its functions, methods, classes and assigned attributes."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def private_uses(path: Path, tree: ast.AST, own: set[str]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            if name.startswith("_") and not name.endswith("__") and (name in RETIRED or name not in own):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for module in modules:
                if any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {module}")
    return found


def test_no_private_name_of_another_library_is_used():
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sources()}
    own = own_private_names(trees.values())
    assert not own & RETIRED, f"a project name shadows a retired library name: {own & RETIRED}"
    found = [use for path, tree in trees.items() for use in private_uses(path, tree, own)]
    assert not found, "private names of other libraries:\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for():
    code = ("import hydra._internal.utils\n"
            "class Model:\n    def _own(self):\n        return self._own()\n"
            "def step(optimizer, trainer):\n    optimizer._on_before_step()\n"
            "    trainer.fit_loop.epoch_loop._batches_that_stepped += 1\n")
    path = ROOT / "example.py"  # as if it were a file of the project
    tree = ast.parse(code)
    found = private_uses(path, tree, own_private_names([tree]))
    assert sorted(use.split(": ")[1] for use in found) == ["._batches_that_stepped", "._on_before_step",
                                                             "import hydra._internal.utils"]
