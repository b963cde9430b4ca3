"""models/ is pure torch: it must never import the serving layer or its frameworks."""
import ast
import pathlib

FORBIDDEN = {"ray", "fastapi", "starlette", "pydantic", "uvicorn", "serving"}
MODELS = pathlib.Path(__file__).resolve().parents[2] / "models"


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_models_package_has_files():
    assert len(list(MODELS.rglob("*.py"))) > 10


def test_models_never_import_the_serving_layer():
    offenders = {
        str(p.relative_to(MODELS.parent)): sorted(imported_roots(p) & FORBIDDEN)
        for p in MODELS.rglob("*.py")
        if imported_roots(p) & FORBIDDEN
    }
    assert offenders == {}


def test_the_check_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom ray import serve\n")
    assert imported_roots(bad) & FORBIDDEN == {"ray"}


SERVING = MODELS.parent / "serving"


def _offenders(folder: pathlib.Path, forbidden_prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    """Files under `folder` with an absolute import of a module starting with one of `forbidden_prefixes`."""
    found = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        bad = sorted(n for n in names if n.startswith(forbidden_prefixes))
        if bad:
            found[str(path.relative_to(folder))] = bad
    return found


def test_the_product_never_imports_the_benchmarks():
    assert _offenders(SERVING, ("benchmarks",)) == {} and _offenders(MODELS, ("benchmarks",)) == {}


def test_the_registry_never_imports_the_deployments():
    """Ray-specific registry operations live beside the deployments (serving/deployments/serve_ops.py)."""
    assert _offenders(SERVING / "registry", ("serving.deployments",)) == {}


def test_the_import_checks_catch_an_offender(tmp_path):
    (tmp_path / "bad.py").write_text("from serving.deployments.chat import ChatDeployment\n")
    assert _offenders(tmp_path, ("serving.deployments",)) == {"bad.py": ["serving.deployments.chat"]}
