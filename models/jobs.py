"""Alias of the ``models`` package namespace, for ``from models.jobs import ...``."""

from models import *  # noqa: F403
from models import __all__  # noqa: F401
