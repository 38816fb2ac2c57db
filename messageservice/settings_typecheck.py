"""Settings for mypy's django-stubs plugin only: the real settings, read as a development run,
so that type checking needs no secrets (with DEBUG off the settings refuse to load without
them). Never used to serve."""

import os

os.environ["ENVIRONMENT"] = "development"
os.environ["DEBUG"] = "true"

from messageservice.settings import *  # noqa: F403
