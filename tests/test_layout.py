"""The package layout (docs/architecture.md §1): the code lives in the
top-level folders, and `hbat/<folder>` are symbolic links to them, so the
repository root is itself an importable `hbat` tree.

What depends on it: static tools (pyright) resolve `hbat.actors` from the
source tree, `ray job submit --working-dir .` (which puts the uploaded copy
of the repo first on PYTHONPATH) imports the full package from that copy,
and a non-editable wheel carries every module and the deploy YAML files.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top-level folders that are packages of the `hbat` namespace
CODE_FOLDERS = sorted(p.name for p in ROOT.iterdir()
                      if (p / "__init__.py").is_file() and p.name not in ("hbat", "tests"))
# where first-party Python files live (each checked by pyright and the AST scan)
SOURCE_FOLDERS = [*CODE_FOLDERS, "tests", "bench", "scripts"]

# This venv's editable install may add an import hook that finds `hbat.*` on
# its own (setuptools does for a package-dir mapping); a cluster node (hbat
# from a wheel, or only the uploaded working_dir) has none, so the subprocess
# below drops any such hook before importing.
_NO_EDITABLE_HOOKS = textwrap.dedent("""
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path
                        if "__editable__" not in getattr(f, "__module__", "")]
""")


def _py_files(folders):
    for name in folders:
        yield from (ROOT / name).rglob("*.py")


def test_code_folders_are_linked_into_the_hbat_package():
    assert {"orchestrator", "actors", "objectives", "deploy", "models"} <= set(CODE_FOLDERS)
    entries = {p.name: p for p in (ROOT / "hbat").iterdir() if p.name != "__pycache__"}
    assert set(entries) == {"__init__.py", *CODE_FOLDERS}, (
        "hbat/ holds __init__.py and one link per top-level code folder")
    for name in CODE_FOLDERS:
        link = entries[name]
        assert link.is_symlink() and os.readlink(link) == f"../{name}", (
            f"hbat/{name} must be a symbolic link to ../{name}; a git checkout without "
            "symlink support (core.symlinks=false) writes it as a text file")
        assert (link / "__init__.py").is_file()


def test_no_code_imports_a_folder_by_its_bare_name():
    """`import actors` would load a second copy of the module next to
    `hbat.actors` (the editable install puts the repo root on sys.path)."""
    bad = []
    for path in _py_files(SOURCE_FOLDERS):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] in CODE_FOLDERS]
    assert not bad, bad


def test_pyright_resolves_every_first_party_import():
    """`pyright` (config in pyproject.toml: import resolution only) from the
    repo root, as after a fresh scripts/setup.sh."""
    proc = subprocess.run([sys.executable, "-m", "pyright", "--outputjson"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    checked = len(list(_py_files(SOURCE_FOLDERS))) + 1  # + hbat/__init__.py
    assert report["summary"]["filesAnalyzed"] >= checked, report["summary"]
    missing = [d for d in report["generalDiagnostics"] if d.get("rule") == "reportMissingImports"]
    first_party = [f"{Path(d['file']).relative_to(ROOT)}:{d['range']['start']['line'] + 1} "
                   f"{d['message']}" for d in missing
                   if d["message"].startswith(('Import "hbat', 'Import ".'))
                   or d["message"].split('"')[1].split(".")[0] in CODE_FOLDERS]
    assert not first_party, "\n".join(first_party)


def test_pyright_outside_the_repo_resolves_hbat_through_the_venv(tmp_path):
    """An editor or tool opened on another project that uses this venv sees
    only site-packages: the editable install must be a path it can read (a
    static .pth), not an import hook."""
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(
        {"typeCheckingMode": "off", "reportMissingImports": "error"}))
    (tmp_path / "uses_hbat.py").write_text(
        "import hbat.actors.policy\nimport hbat.orchestrator.config\n"
        "from hbat.objectives import registry\nfrom hbat.deploy import openai_app\n")
    proc = subprocess.run([sys.executable, "-m", "pyright", "--outputjson",
                           "--pythonpath", sys.executable], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["filesAnalyzed"] == 1, report["summary"]
    assert not report["generalDiagnostics"], report["generalDiagnostics"]


def test_repo_root_first_on_path_imports_the_whole_package_from_the_repo():
    """What `--working-dir .` does: the repo as cwd and first on PYTHONPATH.
    Every module of `hbat` imports, from files under <repo>/hbat."""
    script = _NO_EDITABLE_HOOKS + textwrap.dedent("""
        import importlib, importlib.resources, json, pkgutil
        import hbat
        names = [m.name for m in pkgutil.walk_packages(hbat.__path__, "hbat.")]
        files = {n: importlib.import_module(n).__file__ for n in ["hbat", *names]}
        yaml = sorted(p.name for p in importlib.resources.files("hbat.deploy").iterdir()
                      if p.name.endswith(".yaml"))
        print(json.dumps({"files": files, "yaml": yaml}))
    """)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    files = out["files"]
    for name in ("hbat.actors.policy", "hbat.orchestrator.driver", "hbat.orchestrator.config",
                 "hbat.objectives.registry", "hbat.deploy.openai_app", "hbat.models",
                 "hbat.orchestrator.evaluation.suites", "hbat.orchestrator.schedules"):
        assert name in files, sorted(files)
    got = set()
    for name, file in files.items():
        rel = Path(file).relative_to(ROOT)  # raises if it was loaded from elsewhere
        assert rel.parts[0] == "hbat", f"{name} loaded from {file}, not through <repo>/hbat"
        got.add(Path(*rel.parts[1:]).as_posix())
    expected = {p.relative_to(ROOT).as_posix() for p in _py_files(CODE_FOLDERS)}
    assert expected <= got, sorted(expected - got)
    assert {"cluster.yaml", "rayjob.yaml", "rayservice.yaml", "serve_config.yaml"} <= set(out["yaml"])


def test_ray_working_dir_ships_an_importable_package():
    """A real Ray `working_dir` of the repo, packaged and unpacked by Ray as
    `ray job submit --working-dir .` does, with the repo's own ignore files
    (no `excludes` given). A local directory is accepted as working_dir only
    at job level (`ray.init`), so this runs its own small local Ray in a
    subprocess rather than the session's `ray_local`."""
    script = textwrap.dedent("""
        import json, sys, ray
        ray.init(address="local", num_cpus=1, object_store_memory=100 * 1024**2,
                 include_dashboard=False, runtime_env={"working_dir": sys.argv[1]})

        @ray.remote
        def probe():
            import os, hbat, hbat.orchestrator.config, hbat.actors.policy, hbat.deploy
            return {"cwd": os.getcwd(), "entries": sorted(os.listdir(".")),
                    "files": [m.__file__ for m in (hbat, hbat.orchestrator.config,
                                                   hbat.actors.policy, hbat.deploy)]}

        print(json.dumps(ray.get(probe.remote())))
        ray.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cwd = Path(out["cwd"])
    assert cwd != ROOT and "working_dir_files" in cwd.parts, cwd
    for file in out["files"]:
        assert Path(file).relative_to(cwd).parts[0] == "hbat", (
            f"{file} is not the uploaded copy under {cwd}/hbat")
    # .gitignore / .rayignore keep the upload to the sources
    assert {"hbat", "orchestrator", "configs", "pyproject.toml"} <= set(out["entries"])
    assert not {".git", ".venv", "runs", "build"} & set(out["entries"]), out["entries"]


def test_wheel_carries_every_module_and_the_deploy_yaml(tmp_path):
    """A non-editable install (`pip install .`) builds this wheel: the linked
    folders are copied into it as real files."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_wheel(sys.argv[1]))", str(out)],
        cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(out / proc.stdout.strip().splitlines()[-1]) as whl:
        infos = whl.infolist()
    names = {i.filename for i in infos}
    expected = {f"hbat/{p.relative_to(ROOT)}" for p in _py_files(CODE_FOLDERS)} | {"hbat/__init__.py"}
    assert expected <= names, sorted(expected - names)
    assert {f"hbat/deploy/{p.name}" for p in (ROOT / "deploy").glob("*.yaml")} <= names
    assert not [n for n in names if n.split("/")[0] in CODE_FOLDERS], "only hbat/ is packaged"
    links = [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    assert not links, links
