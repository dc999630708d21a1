"""The layers of docs/architecture.md, enforced: which package of pgchanges may import which."""

import ast
from pathlib import Path

import pgchanges

ROOT = Path(pgchanges.__file__).parent

#: Pure modules: values, names and formats, no I/O; they import no other layer.
PURE = {
    "change", "valuecodec", "names", "pgoutput", "rowmaps", "lazy", "errors", "conninfo", "plain_run", "retry",
    "_version", "compiled",
}  # fmt: skip
#: layer -> the layers it must not import
FORBIDDEN = {
    "pure": {"db", "capture", "sources", "app", "serving", "runtime", "lanes", "routing", "stream", "cli", "periodic"},
    "db": {"capture", "sources", "app", "serving", "runtime", "lanes", "routing", "stream", "cli", "periodic"},
    "capture": {"sources", "app", "serving", "runtime", "lanes", "stream", "cli"},
    "sources": {"app", "serving", "lanes", "stream", "cli", "periodic"},
    "runtime": {"sources", "capture", "db", "app", "serving", "stream", "cli", "ops", "sinks", "forwarding"},
    "ops": {"app", "serving", "stream", "cli", "forwarding", "sinks", "standby"},
    "sinks": {"db", "capture", "app", "serving", "stream", "cli", "forwarding", "standby", "periodic"},
}


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if top in PURE:
        return "pure"
    if top in ("db", "capture", "sources"):
        return top
    if top in ("runtime", "plain_run", "routing", "lanes"):
        return "runtime" if top != "lanes" else "lanes"
    return top


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgchanges."):
            found.add(node.module.removeprefix("pgchanges."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("pgchanges.") for a in node.names if a.name.startswith("pgchanges."))
    return found


def test_no_module_imports_a_layer_above_it():
    broken = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module == "__init__":
            continue
        layer = layer_of(module)
        for imported in imports_of(path):
            if imported.split(".")[0] in FORBIDDEN.get(layer, set()):
                broken.append(f"{module} ({layer}) imports {imported}")
    assert broken == []
