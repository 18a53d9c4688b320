"""The folder where the processes of one pod (the API's uvicorn workers, Celery's prefork
children) leave their Prometheus samples, so that one scrape sums them all.

prometheus_client reads `PROMETHEUS_MULTIPROC_DIR` once, when first imported: a service
prepares the folder before that import, and its children inherit the variable. The folder
is emptied at start, because an `emptyDir` outlives a restarted container and the files of
its dead processes would otherwise add to the new ones' counters.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
TALLIES_SUFFIX = ".tallies"  # the API's tallied series (`tenantry.api.metrics`)
SAMPLE_SUFFIXES = (".db", TALLIES_SUFFIX)  # prometheus_client's files, and the tallies


def prepare_multiprocess_dir(prefix: str) -> Path:
    """The folder named by `PROMETHEUS_MULTIPROC_DIR` (a new temporary one, named there,
    when unset), emptied of samples (only those: the variable may name a shared folder)."""
    named = os.environ.get(ENVIRONMENT_VARIABLE)
    if not named:
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        os.environ[ENVIRONMENT_VARIABLE] = str(folder)
        return folder
    folder = Path(named)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.suffix in SAMPLE_SUFFIXES and entry.is_file():
            entry.unlink()
    return folder


def single_process() -> None:
    """Keep prometheus_client in its own process's memory (the faster mode) even where the
    environment names a folder."""
    os.environ.pop(ENVIRONMENT_VARIABLE, None)


def multiprocess_dir() -> Path | None:
    """The folder this process's samples go to, when prometheus_client runs in
    multiprocess mode."""
    named = os.environ.get(ENVIRONMENT_VARIABLE)
    return Path(named) if named else None
