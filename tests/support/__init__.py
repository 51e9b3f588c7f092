"""Helpers the tests import (fixtures are in tests/conftest.py): tiny model folders
(models.py), solver traces and their scripted replay (traces.py), a live `apr serve`
(servers.py)."""
