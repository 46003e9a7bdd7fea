"""Where the Flower roles' modules are: ``fedmodel.server``, ``fedmodel.clients``, ``fedmodel.simulations``.

The repository keeps the roles at the top (``server/``, ``clients/``, ``simulations/``) and the
concepts inside ``fedmodel/``, but installs them all under one name: a built wheel puts each
role's modules inside ``fedmodel/<role>/`` (``[tool.hatch.build.targets.wheel.sources]`` in
``pyproject.toml``), so no top-level ``server``, ``clients`` or ``simulations`` module reaches a
user's site-packages. In a source checkout (an editable install, ``flwr run .``, the tests) the
package ``fedmodel/<role>/`` holds only its ``__init__.py``, and its modules are read from the
checkout's top-level folder (:func:`role_path`).
"""

from __future__ import annotations

from pathlib import Path


def role_path(package_path: list[str], role: str) -> list[str]:
    """The ``__path__`` of ``fedmodel.<role>``: its own folder when installed, else the checkout's ``<role>/``.

    Parameters
    ----------
    package_path : list[str]
        The package's ``__path__`` as the import system set it (its own folder).
    role : str
        ``server``, ``clients`` or ``simulations``.

    Returns
    -------
    list[str]
        ``package_path`` when the role's modules are installed beside the package's ``__init__.py``
        (a wheel); else the top-level folder of the checkout holding ``fedmodel/``.
    """
    here = Path(package_path[0])
    if any(path.name != "__init__.py" for path in here.glob("*.py")):
        return package_path  # installed from a wheel: the modules are here
    checkout = here.parent.parent / role
    if not (checkout.is_dir() and (checkout.parent / "pyproject.toml").is_file()):
        raise ImportError(f"fedmodel.{role}: its modules are neither installed in {here} nor in a checkout's {checkout}")
    return [str(checkout)]
