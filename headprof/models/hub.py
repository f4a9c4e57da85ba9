"""Hub ids: read from the local HF cache first, fetched only when the hub can be asked.

huggingface_hub retries an unreachable hub for about a minute per file; asking its API once (no
retries, proxies and `HF_ENDPOINT` honoured) tells in well under a second whether a download can
work, so a model that is neither cached nor reachable fails in one line instead of minutes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

UNREACHABLE = "hub unreachable and not in the local HF cache"
UNKNOWN = "hub id unknown?"


class HubMiss(Exception):
    """A hub id that is not cached and cannot be fetched; `reason` is a short hint for the user's error line."""

    def __init__(self, reason: str, cause: BaseException):
        super().__init__(str(cause))  # the loader's own message: what it looked for in the cache
        self.reason = reason


def offline() -> bool:
    """huggingface_hub's offline mode, also when `HF_HUB_OFFLINE` is set after it was imported."""
    from huggingface_hub import constants, is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES


@functools.cache
def _hub_problem(repo_id: str, endpoint: str) -> str | None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi(endpoint=endpoint).model_info(repo_id, timeout=10)
    except GatedRepoError:
        return None  # it exists; the download reports what access it needs
    except RepositoryNotFoundError:
        return UNKNOWN
    except HfHubHTTPError:
        return None  # the hub answered: let the download say what is wrong
    except Exception:  # noqa: BLE001 - connection refused, DNS failure, timeout, proxy error
        return UNREACHABLE
    return None


def hub_problem(repo_id: str) -> str | None:
    """Why `repo_id` can't be downloaded now (offline, unreachable, unknown), or None when it can be tried."""
    if offline():
        return UNREACHABLE
    from huggingface_hub import constants

    return _hub_problem(repo_id, constants.ENDPOINT)


def from_pretrained(loader: Callable[..., T], path: str, **kwargs: Any) -> T:
    """Call a transformers `from_pretrained` on a local folder, or on a hub id: local HF cache first, then the hub.

    Raises `HubMiss` when the id is not cached and the hub can't provide it; other failures propagate.
    """
    if Path(path).exists():
        return loader(path, **kwargs)
    try:
        return loader(path, local_files_only=True, **kwargs)
    except Exception as miss:  # noqa: BLE001 - not (completely) in the local cache
        problem = hub_problem(path)
        if problem:
            raise HubMiss(problem, miss) from None
    return loader(path, **kwargs)
