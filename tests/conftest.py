from __future__ import annotations

from pathlib import Path

import pytest

from nsm_cli.sample import write_sample

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


@pytest.fixture(scope="session")
def sample_dirs(tmp_path_factory) -> dict[tuple[int, int], Path]:
    """Synthetic datasets at several (seed, size), written once per test session."""
    out = {}
    for seed, size in ((1, 2500), (2, 2500), (3, 5000)):
        folder = tmp_path_factory.mktemp(f"sample_{seed}_{size}")
        write_sample(folder, size, seed=seed, mean_events=50)
        out[(seed, size)] = folder
    return out


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)
