"""A non-editable install works: `pip install .` into a fresh venv, then the pipeline's smoke
config runs from another directory, with every default config found inside the installed
package (no checkout on the path)."""

import json
import os
import site
import subprocess
import sys
import venv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_venv(root: str) -> str:
    """A new venv whose only extra path is the test venv's site-packages (the dependencies:
    a .pth line adds the folder without running its .pth files, so the editable install's
    import hook stays out)."""
    venv.create(root, with_pip=False)
    python = os.path.join(root, "bin", "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(purelib, "_test_deps.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    return python


def _source_copy(dest: str) -> str:
    """The tracked files of the checkout (so the build leaves the checkout untouched)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = os.path.join(REPO, rel)
        if not os.path.isfile(src):
            continue  # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        with open(src, "rb") as fin, open(os.path.join(dest, rel), "wb") as fout:
            fout.write(fin.read())
    return dest


def test_pip_install_non_editable_then_pipeline_smoke_from_elsewhere(tmp_path):
    python = _fresh_venv(str(tmp_path / "venv"))
    src = _source_copy(str(tmp_path / "src"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         src],
        check=True, capture_output=True, text=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import monosem_jax, monosem_jax.configs as c; "
                       "print(monosem_jax.__file__); print(c.__file__)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(p.startswith(str(tmp_path / "venv")) for p in where), where  # not the checkout
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [os.path.join(str(tmp_path / "venv"), "bin", "monosem-pipeline"), "--workdir", "W",
         f"--config={os.path.dirname(where[1])}/pipeline/tiny.py:smoke"],
        cwd=elsewhere, capture_output=True, text=True, env=env, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])  # the pipeline's last line
    assert summary["report"]["report"] == str(elsewhere / "W" / "report.md")
    assert (elsewhere / "W" / "report.md").stat().st_size > 0
    assert (elsewhere / "W" / "browser" / "index.html").exists()
