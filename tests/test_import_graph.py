"""The package's files import each other without a circle, lazy imports (inside functions)
included: a ring of files that need each other cannot be read, tested or moved one at a
time."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tinymoe")


def _module_name(path):
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def import_graph():
    """``{module: {modules it imports}}`` for every file of the package, from its syntax
    tree: every ``import tinymoe...`` and ``from tinymoe... import ...`` at any depth; ``from
    P import m`` counts as importing the submodule ``P.m`` when it is one, and ``P`` itself
    when a name is defined there."""
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                files[_module_name(os.path.join(folder, name))] = os.path.join(folder, name)
    graph = {}
    for module, path in files.items():
        with open(path) as handle:
            tree = ast.parse(handle.read())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names}
                targets.update(submodules & set(files))
                if submodules - set(files):  # a name defined in the module itself
                    targets.add(node.module)
        graph[module] = {target for target in targets if target in files and target != module}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_finder_sees_a_lazy_circle():
    # The detector itself: a function-level import that closes a ring is found.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", ["tinymoe"])
def test_no_import_circle_in_the_package(package):
    graph = import_graph()
    assert "tinymoe.export.report" in graph and graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
