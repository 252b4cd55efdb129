"""Method registry: one name -> one class. Each method lives in its own module."""

from ssl_ray.methods import (  # noqa: F401  (each registers itself)
    barlow_twins,
    byol,
    dcl,
    dino,
    moco,
    moco_v3,
    simclr,
    simsiam,
    supcon,
    supervised,
    swav,
    vicreg,
)
from ssl_ray.methods.registry import METHODS, build_method, register_method

__all__ = ["METHODS", "build_method", "register_method"]
