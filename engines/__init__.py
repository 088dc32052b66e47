"""Engine hosts: one long-lived subprocess per (engine, GPU) slot.

``python -m engines`` runs a host; ``engines.host`` is its I/O loop; ``engines.base`` the
interface every backend implements; one module per backend (``synthetic``, ``llama``,
``sdcpp``) plus ``provision`` (model downloads). Only the host process imports a backend:
the supervisor imports ``engines.catalog`` alone, which never imports an inference library.
"""
