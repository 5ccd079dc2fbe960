"""Build hook: ship the playbook library inside the package.

The repository keeps the library at its root (``playbooks/``, ``templates/``,
``examples/``), where the README, the tests and ``cmtyflow validate playbooks/`` use
it. A wheel copies those three folders to ``cmtyflow/library/`` so that ``cmtyflow new``
works from an installed package; an editable install reads them from the checkout
(``cmtyflow.cli.new.library_root``). Everything else is configured in pyproject.toml;
MANIFEST.in puts the folders in the sdist, so a wheel built from it has them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
LIBRARY = ("playbooks", "templates", "examples")


class build_py_with_library(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "cmtyflow" / "library"
        for name in LIBRARY:
            source = ROOT / name
            if not source.is_dir():
                raise SystemExit(
                    f"the playbook library folder {source} is missing; cannot build cmtyflow"
                )
            shutil.copytree(
                source,
                target / name,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", ".*"),
            )


setup(cmdclass={"build_py": build_py_with_library})
