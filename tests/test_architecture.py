"""The package's layout rules: imports point one way, no cycle, no reading of private names.

Data flows inputs -> gradients -> curvature / iHVP -> scores -> ranking -> results, and the
modules import only down that list: nothing imports the explainer, and no module reads another
module's underscore attributes.
"""

import ast
import subprocess
import sys
from pathlib import Path

import sk_fastif

PACKAGE = Path(sk_fastif.__file__).parent
MODULES = sorted(
    ".".join(("sk_fastif",) + p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(
        ".__init__")
    for p in PACKAGE.rglob("*.py")
)


def _source(module: str) -> Path:
    parts = module.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _package_of(module: str) -> str:
    return module if _source(module).name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str) -> set[str]:
    """The sk_fastif modules that ``module`` imports, at any depth of its code."""
    tree = ast.parse(_source(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            if node.module:  # ``from .. import _inputs`` imports the module, not the package
                names.append(target)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


def test_the_module_list_is_what_the_design_names():
    for name in ("_explainer", "_sklearn_compat", "exceptions", "_net", "_inputs",
                 "_validation", "_random", "_gradients", "_curvature", "_engine", "_ranking",
                 "_parallel", "_correct", "neighbors", "neighbors._base", "metrics", "datasets",
                 "toy", "solvers", "solvers._base", "plotting"):
        assert f"sk_fastif.{name}" in MODULES, name


def test_import_graph_has_no_cycle():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            if nxt == _package_of(node) and node.startswith(nxt + "."):
                continue  # a submodule importing its own package's names is resolved lazily
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def test_nothing_imports_the_explainer():
    users = [m for m in MODULES if "sk_fastif._explainer" in _imports(m)]
    assert users == ["sk_fastif"], users


def test_the_engine_has_no_scikit_learn_in_it():
    tree = ast.parse(_source("sk_fastif._engine").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.startswith("sklearn") for name in imported), imported


# Underscore attributes of other libraries' objects that this package has to use; none of the
# package's own.
_FOREIGN_PRIVATE = {
    "_get_predict_nonlinearity",  # skorch: the net's own predict nonlinearity
    "_validate_params",  # scikit-learn: BaseEstimator's parameter validation, on self
    "_validate_data",  # scikit-learn < 1.6: the shim of validate_data
    "_metadata_request", "_sklearn_output_config",  # as sklearn.base.clone copies them
    "_safe_indexing",  # imported from sklearn.utils, not read from a module of ours
    "_parameter_constraints",  # scikit-learn's declared constraints, extended by subclasses
}


def test_no_module_reads_another_modules_private_attributes():
    offences = []
    for module in MODULES:
        tree = ast.parse(_source(module).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in _FOREIGN_PRIVATE:
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls", "new", "state"):
                continue  # an object's own attributes (``new`` is a copy of ``self``)
            if (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                    and owner.func.id in ("type", "super")):
                continue  # type(self)._name, super()._hook
            offences.append(f"{module}:{node.lineno}: .{attr}")
    assert not offences, "\n".join(offences)


_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for module in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "sk_fastif" or m.startswith("sk_fastif.")]:
        del sys.modules[name]  # no module of the package loaded: each import starts from none
    try:
        importlib.import_module(module)
    except Exception:
        failed.append(module + ":\\n" + traceback.format_exc(limit=-3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_on_its_own():
    # one interpreter for all of them (torch and the other dependencies are imported once);
    # before each import every sk_fastif module is unloaded, so an import that works only
    # after another module of the package was loaded first fails here
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *MODULES], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


# The layer order of DESIGN.md, bottom first: a module may import only modules of its own layer
# or below. Modules not named here (exceptions, _sklearn_compat, _random, ...) are utilities
# that import nothing of the package above them (checked by the cycle test).
LAYERS = [
    ("sk_fastif._inputs",),
    ("sk_fastif._net",),
    ("sk_fastif._gradients",),
    ("sk_fastif._curvature",),
    ("sk_fastif.solvers",),
    ("sk_fastif._engine", "sk_fastif._store", "sk_fastif.neighbors", "sk_fastif._parallel"),
    ("sk_fastif._ranking", "sk_fastif._explanation"),
    ("sk_fastif._correct", "sk_fastif.metrics", "sk_fastif.plotting"),
    ("sk_fastif._explainer",),
]


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def test_imports_follow_the_layer_order():
    offences = []
    for module in MODULES:
        mine = _layer(module)
        if mine is None:
            continue
        for target in _imports(module):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                offences.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not offences, "\n".join(offences)


def _classes():
    """(module, class name, base names) of every class defined in the package."""
    for module in MODULES:
        tree = ast.parse(_source(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")
                         for b in node.bases]
                yield module, node.name, bases


def test_no_mixin_has_a_single_host():
    """A class named ``...Mixin`` exists to be shared: one with a single host is a partial
    class, and its code belongs in a room of its own."""
    classes = list(_classes())
    hosts: dict[str, int] = {}
    for _, _, bases in classes:
        for b in bases:
            hosts[b] = hosts.get(b, 0) + 1
    single = [f"{m}.{name}" for m, name, _ in classes
              if name.endswith("Mixin") and hosts.get(name, 0) == 1
              and not name.startswith("Prefit")]  # PrefitSharingMixin: scikit-learn glue
    assert not single, single


_ADAPTER_ATTRIBUTES = {"theta", "fixed", "selected", "use_vmap", "use_forward_scoring",
                       "batch_loss_is_mean", "sample_loss", "mean_loss", "loss_of_output",
                       "iter_gradients", "iter_products"}
_ADAPTER_ROOMS = ("sk_fastif._net", "sk_fastif._gradients", "sk_fastif._engine",
                  "sk_fastif._store", "sk_fastif._curvature")


def test_only_the_adapter_engine_and_curvature_read_the_adapters_attributes():
    offences = []
    for module in MODULES:
        if module.startswith(_ADAPTER_ROOMS):
            continue
        tree = ast.parse(_source(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "bridge":
                offences.append(f"{module}:{node.lineno}: .bridge")
            if (isinstance(node, ast.Attribute) and node.attr in _ADAPTER_ATTRIBUTES
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "bridge"):
                offences.append(f"{module}:{node.lineno}: .bridge.{node.attr}")
    assert not offences, "\n".join(offences)


def test_the_explainer_is_at_most_450_lines_with_what_it_inherits():
    import inspect

    from sk_fastif import InfluenceExplainer

    total = 0
    for cls in InfluenceExplainer.__mro__:
        if cls.__module__.startswith("sk_fastif"):
            total += len(inspect.getsource(cls).splitlines())
    assert total <= 450, total
