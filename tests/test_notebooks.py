"""Every notebook in examples/ runs top to bottom in a fresh kernel without an error.

Each notebook runs as Jupyter runs it: in its own folder, in a new IPython kernel of
the Python that runs the tests (a kernelspec written for ``sys.executable``, so neither
an installed "python3" kernelspec nor another Python's is needed or used), with this
repository's root first on PYTHONPATH, so the kernel imports the nestzoo under test
whether or not it is installed. A notebook must not leave files in the repository.

Notebooks are committed executed, with their outputs. To refresh them after a change:

    python tests/test_notebooks.py examples/quickstart.ipynb    # runs it as the test does, writes the outputs
"""
import contextlib
import os
import pathlib
import re
import resource
import sys
import tempfile
import time

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell; a notebook meant for readers should take about a minute in all
KERNEL = "nestzoo-test-python"
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}


class NotebookError(Exception):
    """A cell of a notebook failed; the message names the notebook and the cell."""


def code_cells(notebook):
    return [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def describe(path, index, cell):
    lines = cell.source.strip().splitlines()
    return f"{path.name}, cell {index} (starting {lines[0] if lines else '(empty)'!r})"


@contextlib.contextmanager
def kernel_environment(jupyter_dir):
    """A kernelspec for this interpreter in `jupyter_dir`, found first; the repository first on
    PYTHONPATH; TensorFlow's C++ log quiet. The previous environment is restored on exit."""
    write_kernel_spec(pathlib.Path(jupyter_dir) / "kernels" / KERNEL,
                      overrides={"display_name": f"nestzoo tests ({sys.executable})"})
    prepend = {"JUPYTER_PATH": str(jupyter_dir), "PYTHONPATH": str(ROOT)}
    changes = {name: os.pathsep.join(filter(None, [value, os.environ.get(name)])) for name, value in prepend.items()}
    changes["TF_CPP_MIN_LOG_LEVEL"] = "2"
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(path, jupyter_dir):
    """Run the notebook at `path` in a fresh kernel in its own folder; return it executed, the
    wall-clock seconds it took (kernel start included) and the kernel's CPU seconds (user and
    system, all threads; less sensitive than the wall clock to a busy machine).
    Raises NotebookError naming the failing cell."""
    notebook = nbformat.read(path, as_version=4)
    with kernel_environment(jupyter_dir):
        client = NotebookClient(notebook, kernel_name=KERNEL, timeout=CELL_TIMEOUT,
                                resources={"metadata": {"path": str(path.parent)}})  # cwd, as in Jupyter
        start, cpu_start = time.perf_counter(), _children_cpu()
        with client.setup_kernel():
            for index, cell in code_cells(notebook):
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as error:
                    raise NotebookError(f"{describe(path, index, cell)} raised:\n{error}") from None
                except (CellTimeoutError, DeadKernelError) as error:
                    raise NotebookError(f"{describe(path, index, cell)}: {type(error).__name__}: {error}") from None
        seconds = time.perf_counter() - start
    # setup_kernel has shut the kernel down and reaped it, so its CPU time counts as a child's
    return notebook, seconds, _children_cpu() - cpu_start


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def repo_files():
    files = set()
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        files.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in names)
    return files


def test_readme_names_every_notebook():
    """A reader finds each notebook of examples/ from the README, and each notebook it names exists."""
    named = set(re.findall(r"examples/([\w.-]+\.ipynb)", (ROOT / "README.md").read_text()))
    assert NOTEBOOKS and named == {path.name for path in NOTEBOOKS}, (
        f"examples/ has {sorted(path.name for path in NOTEBOOKS)}; README.md names {sorted(named)}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_committed_executed(path):
    """Readers see outputs: every code cell was run, in order, and none shows an error."""
    notebook = nbformat.read(path, as_version=4)
    counts = [cell.execution_count for _, cell in code_cells(notebook)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts}; refresh it with `python tests/test_notebooks.py {path.name}`")
    for index, cell in code_cells(notebook):
        assert not [out for out in cell.outputs if out.output_type == "error"], (
            f"{describe(path, index, cell)} was committed with an error output")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, record_property):
    files_before = repo_files()
    failure = None
    try:
        _, seconds, cpu_seconds = execute(path, tmp_path)
    except NotebookError as error:
        failure = str(error)
    if failure:
        pytest.fail(failure, pytrace=False)
    record_property("seconds", round(seconds, 1))
    record_property("cpu_seconds", round(cpu_seconds, 1))
    print(f"{path.name}: {seconds:.1f} s wall clock, kernel start included; {cpu_seconds:.1f} s CPU")
    new_files = repo_files() - files_before
    assert not new_files, f"{path.name} left files in the repository: {sorted(new_files)}"


if __name__ == "__main__":
    for arg in sys.argv[1:] or NOTEBOOKS:
        target = pathlib.Path(arg).resolve()
        if not target.exists():
            target = ROOT / "examples" / arg
        with tempfile.TemporaryDirectory() as folder:
            executed, seconds, cpu_seconds = execute(target, folder)
        nbformat.write(executed, target)
        print(f"{target.relative_to(ROOT)}: executed in {seconds:.1f} s ({cpu_seconds:.1f} s CPU), outputs written")
