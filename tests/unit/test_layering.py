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
