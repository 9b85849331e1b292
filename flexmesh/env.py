"""The one module that reads (and, for Ray, defaults) the process environment.

Every variable FlexMesh honours is named here once; everything else takes its values as
arguments or config (STYLE.md rule 4). `tests/unit/test_layers.py` fails if another module
touches `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ADMIN_TOKEN = "FLEXMESH_ADMIN_TOKEN"
"""The Admin token: `flexmesh serve` requires it, clients send it."""
API_KEY = "FLEXMESH_API_KEY"
"""The HTTP API's key: `flexmesh serve` requires it, the load generator sends it."""
TLS_CA = "FLEXMESH_TLS_CA"
"""A PEM file of the CA that signed the gateway's certificate (clients use TLS with it)."""
CANN_HOME_VARS = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")
"""Where Ascend's CANN toolkit says it lives (its `set_env.sh` exports these)."""


def admin_token() -> str:
    return os.environ.get(ADMIN_TOKEN, "")


def api_key(client: bool = False) -> str:
    """The HTTP API key; a client also takes the OpenAI SDK's `OPENAI_API_KEY`."""
    key = os.environ.get(API_KEY, "")
    return key or os.environ.get("OPENAI_API_KEY", "") if client else key


def tls_ca() -> str:
    return os.environ.get(TLS_CA, "")


def cann_home() -> str:
    return next((os.environ[n] for n in CANN_HOME_VARS if os.environ.get(n)), "")


def overridden(defaults: Mapping[str, str]) -> dict[str, str]:
    """`defaults`, each replaced by the environment's value of the same name when set."""
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def set_defaults(values: Mapping[str, str]) -> None:
    """Set variables this process's children (Ray) read, unless already set."""
    for k, v in values.items():
        os.environ.setdefault(k, v)
