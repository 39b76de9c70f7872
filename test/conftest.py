"""Shared fixtures: the seed checkpoint fixture from ../shared, when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SEED_FIXTURE_DIR = REPOSITORY.parent / 'shared' / 'fixtures' / 'seed_checkpoint_gray'


@pytest.fixture(scope='session')
def placeholder_checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained placeholder as a checkpoint file.

    Tests that need a predictable network, or the placeholder's warnings, pass this file instead of
    relying on the bundled default, which changes as training improves it.
    """
    from stereonet_ros.inference import placeholder_checkpoint
    from stereonet_ros.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp('placeholder') / 'placeholder.safetensors'
    save_checkpoint(path, placeholder_checkpoint())
    return path


@pytest.fixture(scope='session')
def seed_fixture_dir() -> Path:
    """The seed checkpoint fixture folder; tests needing it skip (with the reason) where it is absent."""
    if not (SEED_FIXTURE_DIR / 'seed_gray_random.ckpt').exists():
        pytest.skip(f'seed checkpoint fixture not found at {SEED_FIXTURE_DIR} (it ships in ../shared, present in CI)')
    return SEED_FIXTURE_DIR


@pytest.fixture(scope='session')
def seed_checkpoint_path(seed_fixture_dir: Path) -> Path:
    return seed_fixture_dir / 'seed_gray_random.ckpt'


@pytest.fixture(scope='session')
def seed_reference(seed_fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(seed_fixture_dir / 'reference_outputs.npz') as archive:
        return {key: archive[key] for key in archive.files}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU (runs on the lent device machine: scripts/gpu_run)')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, saying so, where torch sees no CUDA device."""
    del config
    cuda_items = [item for item in items if item.get_closest_marker('cuda') is not None]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (runs on the lent device machine: scripts/gpu_run)')
    for item in cuda_items:
        item.add_marker(skip)
