"""DESIGN.md's layering: services/ never imports fastai or torch (the deployed image has neither)."""

import ast
import subprocess
import sys

from tests.helpers import REPO

# spaCy (torch-free) tokenises text exactly as fastai does; see the note in DESIGN's layering table.
# httpx (a dependency of bentoml) is the HTTP library of the Python client, services/client.py.
# _bentoml_impl, yaml, starlette and pydantic_core come with bentoml (services/uploads.py wraps its
# multipart parser and types the file fields on Starlette's uploads; a built Bento's bento.yaml names the
# models it pinned). openvino is the optional runtime of PIPELINES_PROVIDER=openvino (imported only there).
ALLOWED_THIRD_PARTY = {"numpy", "PIL", "onnxruntime", "bentoml", "_bentoml_impl", "yaml", "pydantic", "pydantic_core",
                       "starlette", "spacy", "httpx", "openvino"}


def top_level_modules_after(imports: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `imports`."""
    code = f"{imports}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return set(completed.stdout.strip().splitlines()[-1].split())


def test_services_import_no_fastai_or_torch_at_runtime():
    modules = sorted(p.stem for p in (REPO / "services").glob("*.py") if p.stem != "__init__")
    loaded = top_level_modules_after("".join(f"import services.{name}\n" for name in modules))
    assert loaded & {"torch", "fastai", "torchvision", "fastcore"} == set()


def test_services_sources_import_only_allowed_packages():
    stdlib = set(sys.stdlib_module_names)
    for path in (REPO / "services").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top in ALLOWED_THIRD_PARTY or top == "services", f"{path.name} imports {name}"


def test_training_cli_imports_no_serving_framework():
    """bentoml is imported only when registering, so training machines without it (and --help) work."""
    assert "bentoml" not in top_level_modules_after("import pipelines.cli")


def test_cli_loads_neither_torch_nor_fastai_nor_matplotlib_until_a_command_needs_them():
    """`pipelines --help` and `pipelines predict --url` answer in well under a second, not after torch's 3-9 s."""
    loaded = top_level_modules_after("import pipelines.cli, pipelines.predict, pipelines.bench")
    assert loaded & {"torch", "fastai", "torchvision", "matplotlib"} == set()
