"""Method registry: one name -> one class. Each method lives in its own module of this
package and registers itself on import; every module here that is not shared machinery is
imported, so a new method is its file and nothing else."""

import importlib
import pkgutil

from ssl_ray.methods.registry import METHODS, method_class, register_method

_SHARED = {"base", "params", "registry"}

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _SHARED:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "method_class", "register_method"]
