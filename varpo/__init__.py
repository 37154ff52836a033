"""varpo: variance-aware RLHF."""
__version__ = "0.1.0"

from .moved import install as _install_moved  # noqa: E402

_install_moved()  # an import of a module that was split names where its contents went
