"""The house rules of docs/architecture.md, checked on the source: imports flow one way,
entry points never import each other, the library has no import cycle, files stay short."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1]
ENTRY_POINTS = ("train", "infer")
LONG_FILE = 500  # lines; a longer file says why on one of its first lines ("over 500 lines: ...")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, text: str | None = None) -> set[str]:
  """Every module `path` imports, at the top or inside a function (absolute names)."""
  tree = ast.parse(path.read_text() if text is None else text, str(path))
  package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against the package
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
  return names


def sources(*folders: str) -> list[pathlib.Path]:
  return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def top(name: str) -> str:
  return name.split(".", 1)[0]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  cycles, index, low, stack, on_stack = [], {}, {}, [], set()

  def visit(v: str) -> None:  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return cycles


def test_no_entry_point_imports_another():
  offenders = [
    f"{p.relative_to(ROOT)} imports {name}"
    for p in sources(*ENTRY_POINTS)
    for name in imports(p)
    if top(name) in ENTRY_POINTS
  ]
  assert not offenders, offenders


def test_the_library_imports_no_entry_point_and_no_config():
  offenders = [
    f"{p.relative_to(ROOT)} imports {name}"
    for p in sources("catts_jax")
    for name in imports(p)
    if top(name) in (*ENTRY_POINTS, "configs")
  ]
  assert not offenders, offenders


def test_the_library_has_no_import_cycle():
  modules = {module_name(p): p for p in sources("catts_jax")}
  graph = {
    name: {m for m in imports(path) if m in modules and m != name and not name.startswith(m + ".")}
    for name, path in modules.items()
  }
  # A package's __init__ importing its own submodules is not a cycle of the design.
  for name in graph:
    graph[name] = {
      m for m in graph[name] if not (modules[m].name == "__init__.py" and name.startswith(m + "."))
    }

  assert not import_cycles(graph), import_cycles(graph)


# The floors of docs/architecture.md, bottom up: a module imports only from its floor or below.
FLOORS = (
  ("catts_jax", "catts_jax.sharding", "catts_jax.checkpoint", "catts_jax.perturb", "catts_jax.saliency",
   "catts_jax.safetensors_io", "catts_jax.scratch", "catts_jax.runs", "catts_jax.cli"),
  ("catts_jax.data",),
  ("catts_jax.models",),
  ("catts_jax.processing", "catts_jax.roofline"),
  ("catts_jax.scoring", "catts_jax.sampling"),
  ("catts_jax.policy", "catts_jax.verify"),
  ("catts_jax.eval",),
  ("catts_jax.rl", "catts_jax.tts"),
  ("catts_jax.aot", "catts_jax.bench"),
  ("catts_jax.demo",),
)  # fmt: skip


def floor(module: str) -> int:
  """The highest floor whose entry is `module` or a package above it."""
  found = [i for i, names in enumerate(FLOORS) for n in names if module == n or module.startswith(n + ".")]
  assert found, f"{module} is on no floor of docs/architecture.md"
  return max(found)


def test_imports_go_down_the_floors():
  modules = {module_name(p): p for p in sources("catts_jax")}
  upward = [
    f"{name} (floor {floor(name)}) imports {m} (floor {floor(m)})"
    for name, path in modules.items()
    for m in imports(path)
    if m in modules and floor(m) > floor(name)
  ]
  assert not upward, upward
  assert floor("catts_jax.tts.voting") > floor("catts_jax.eval.metrics") > floor("catts_jax.policy")


def test_long_files_say_why():
  long = []
  for p in sources("catts_jax", *ENTRY_POINTS, "configs", "tests"):
    lines = p.read_text().splitlines()
    if len(lines) > LONG_FILE and not any("over 500 lines" in line.lower() for line in lines[:5]):
      long.append(f"{p.relative_to(ROOT)}: {len(lines)} lines")
  assert not long, long


def test_the_checks_can_fail():
  """The walker resolves what a bad module imports, and a cycle is found."""
  bad = ROOT / "catts_jax" / "tts" / "probe.py"
  names = imports(
    bad, "from train import cdrl\nfrom ..eval import report\n\ndef f():\n  import configs.catts\n"
  )
  assert {"train", "train.cdrl", "catts_jax.eval", "catts_jax.eval.report", "configs.catts"} <= names
  assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert import_cycles({"a": {"b"}, "b": set()}) == []
