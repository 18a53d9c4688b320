"""Exec probes of the worker pod, without `celery inspect ping` (which needs a round trip
through the broker and every worker, and times out under load).

- live: the heartbeat file, refreshed by the worker's own timer, is recent. A wedged worker
  stops refreshing it and is restarted.
- ready: live, and the broker answers (a Redis PING, or an AMQP connection that opens). A
  worker cut off from its broker takes no work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tenantry.worker.broker_status import BrokerUnreachableError, broker_status


def write_heartbeat(path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{time.time():.3f}\n")
    os.replace(temporary, path)


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the last heartbeat; None when there has been none."""
    try:
        return max(0.0, time.time() - float(path.read_text().strip()))
    except (FileNotFoundError, ValueError):
        return None


def check_live(path: Path, max_age_seconds: float) -> tuple[bool, str]:
    age = heartbeat_age(path)
    if age is None:
        return False, f"no heartbeat at {path}"
    if age > max_age_seconds:
        return False, f"last heartbeat {age:.1f}s ago (limit {max_age_seconds:g}s)"
    return True, f"heartbeat {age:.1f}s ago"


def check_broker(url: str, timeout_seconds: float = 2.0) -> tuple[bool, str]:
    status = broker_status(url, timeout_seconds)
    try:
        status.ping()
    except BrokerUnreachableError as error:
        return False, f"broker unreachable: {error}"
    finally:
        status.close()
    return True, "broker answers"
