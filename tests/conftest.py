"""Shared test fixtures: where the real data lives, the tiny models, one torch thread, and a guard against network
access."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Commands take unnamed inputs from Data/ (vera.data.layout); tests name theirs, whatever a developer downloaded.
os.environ["VERA_DATA"] = tempfile.mkdtemp(prefix="vera-tests-no-data-")
os.chmod(os.environ["VERA_DATA"], 0o755)  # the read-only-folder tests run commands as an unprivileged user

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (see the README, 'Test')")
    return SHARED_DATA


class TinyModels:
    """Tiny random VLMs (``vera.vlm.tiny_model``), each written once per test run and loaded once."""

    def __init__(self, root: Path):
        self.root = root
        self._paths: dict[str, Path] = {}
        self._backends: dict[str, object] = {}

    def path(self, arch: str) -> Path:
        if arch not in self._paths:
            from vera.vlm.tiny_model import write_tiny_model

            self._paths[arch] = write_tiny_model(arch, self.root / arch)
        return self._paths[arch]

    def backend(self, arch: str):
        if arch not in self._backends:
            from vera.vlm.backends import load_backend

            self._backends[arch] = load_backend("hf", str(self.path(arch)), device="cpu", local_files_only=True)
        return self._backends[arch]


@pytest.fixture(scope="session")
def tiny_models():
    """Shared tiny models for every test that needs one; the folder is removed when the run ends."""
    with tempfile.TemporaryDirectory(prefix="vera-tiny-models-") as root:
        yield TinyModels(Path(root))


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the tiny models run fastest so on a shared CPU, and the arithmetic equals
    that of processes started with ``OMP_NUM_THREADS=1``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def let_go_of_run_folders():
    """Run folders are let go when a test ends, as a command's are when its process exits; so are those of the
    wider fixtures set up before it (their runs are finished commands to the test)."""
    from vera.runs import release_folders

    release_folders()
    yield
    release_folders()
